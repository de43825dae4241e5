"""Read and validate the groups config (JSON) of an HDF5 creation.

The config has one entry per HDF5 group. Example (see docs/hdf5_layout.md)::

    {
      "input": {"type": "volume", "files": ["dwi/fa.nii.gz", "dwi/peaks*.nii.gz"],
                "standardization": "independent", "std_mask": ["masks/wm.nii.gz"]},
      "streamlines": {"type": "streamlines", "files": ["tractograms/*.trk"],
                      "reference": "input", "dps_keys": ["seeds"]}
    }

File names are relative to each subject's folder; ``*`` wildcards are
expanded per subject (see ``dwi_ml.data.hdf5.subjects.resolve_files``).
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from dwi_ml.data.hdf5.connectivity import (
    CONNECTIVITY_KEYS,
    ConnectivityConfig,
    parse_connectivity_config,
)
from dwi_ml.data.hdf5.layout import STREAMLINES_TYPE, VOLUME_TYPE
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.safe_load import load_json_file
from dwi_ml.io_utils.script_args import refuse_wrong_path_kind

STANDARDIZATIONS = ("all", "independent", "per_file", "none")
VOLUME_KEYS = ("type", "files", "standardization", "std_mask")
STREAMLINE_KEYS = ("type", "files", "reference", "dps_keys",
                   *CONNECTIVITY_KEYS)


@dataclass(frozen=True)
class VolumeGroupConfig:
    """One volume group: NIfTI files concatenated along the feature axis.

    Attributes
    ----------
    name : str
        Group name in the HDF5.
    files : tuple of str
        File patterns, relative to the subject folder, in feature order.
    standardization : str
        One of ``STANDARDIZATIONS``.
    std_mask : tuple of str
        Mask file patterns; their union defines the standardization voxels.
    """
    name: str
    files: Tuple[str, ...]
    standardization: str = "none"
    std_mask: Tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamlineGroupConfig:
    """One streamline group: .trk/.tck/.trx files concatenated.

    Attributes
    ----------
    name : str
        Group name in the HDF5.
    files : tuple of str
        File patterns, relative to the subject folder.
    reference : str or None
        Volume group whose grid defines the voxel space of the streamlines.
        None only when the config has no volume group: the first tractogram
        of the group (a .trk or .trx) is then the reference.
    dps_keys : tuple of str
        data_per_streamline keys to keep.
    connectivity : ConnectivityConfig or None
        The subject's known connectivity (see
        :mod:`dwi_ml.data.hdf5.connectivity`).
    """
    name: str
    files: Tuple[str, ...]
    reference: Optional[str] = None
    dps_keys: Tuple[str, ...] = ()
    connectivity: Optional[ConnectivityConfig] = None


@dataclass(frozen=True)
class GroupsConfig:
    """The validated config, groups in the order of the JSON file.

    ``raw`` is the dict as read, written to the ``groups_config`` root attr.
    """
    volume_groups: Tuple[VolumeGroupConfig, ...]
    streamline_groups: Tuple[StreamlineGroupConfig, ...]
    raw: dict


def load_groups_config(config):
    """Read and validate a groups config.

    Parameters
    ----------
    config : str, os.PathLike or dict
        Path to the JSON file, or the already-parsed dict.

    Returns
    -------
    GroupsConfig

    Raises
    ------
    DwiMLUserError
        On unreadable JSON, an unknown key or type, a missing ``files``, a
        bad ``standardization`` or a ``reference`` that is not a volume group.
    """
    if isinstance(config, dict):
        source, raw = "groups config", config
    elif not isinstance(config, (str, os.PathLike)):
        raise DwiMLUserError(
            f"groups config: expected a JSON file's path or a dict, found "
            f"{type(config).__name__} {config!r:.60}.")
    else:
        source = f"config '{config}'"
        raw = _read_json(config, source)
    if not isinstance(raw, dict) or not raw:
        raise DwiMLUserError(
            f"{source}: expected a JSON object with one entry per group, "
            f"found {type(raw).__name__} {raw!r:.60}.")
    volume_groups, streamline_groups = [], []
    for name, entry in raw.items():
        where = f"{source}, group '{name}'"
        _check_group_name(name, where)
        if not isinstance(entry, dict):
            raise DwiMLUserError(
                f"{where}: expected an object with 'type' and 'files', "
                f"found {entry!r:.60}.")
        group_type = entry.get("type")
        if group_type == VOLUME_TYPE:
            volume_groups.append(_parse_volume_group(name, entry, where))
        elif group_type == STREAMLINES_TYPE:
            streamline_groups.append((name, entry, where))
        else:
            raise DwiMLUserError(
                f"{where}: 'type' must be '{VOLUME_TYPE}' or "
                f"'{STREAMLINES_TYPE}', found {group_type!r}.")
    volume_names = [g.name for g in volume_groups]
    streamline_groups = [
        _parse_streamline_group(name, entry, volume_names, where)
        for name, entry, where in streamline_groups]
    return GroupsConfig(tuple(volume_groups), tuple(streamline_groups), raw)


def _read_json(path, source):
    refuse_wrong_path_kind(path, "config")
    if not os.path.isfile(path):
        raise DwiMLUserError(f"{source} does not exist.")
    return load_json_file(path, "config")


def _check_group_name(name, where):
    if not name or "/" in name or name == ".":
        raise DwiMLUserError(
            f"{where}: a group name must be non-empty and contain no '/'.")


def _check_keys(entry, allowed, where):
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise DwiMLUserError(
            f"{where}: unknown key '{unknown[0]}' for a '{entry['type']}' "
            f"group; expected keys among {list(allowed)}.")


def _string_list(entry, key, where, required, what="file names"):
    """Return entry[key] as a tuple of str; a single str is one item."""
    value = entry.get(key, [] if not required else None)
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or (required and not value)
            or not all(isinstance(v, str) and v for v in value)):
        expected = "a non-empty list" if required else "a list"
        raise DwiMLUserError(
            f"{where}: '{key}' must be {expected} of {what}, "
            f"found {value!r:.60}.")
    return tuple(value)


def _relative_files(entry, key, where, required):
    files = _string_list(entry, key, where, required)
    for name in files:
        if os.path.isabs(name):
            raise DwiMLUserError(
                f"{where}: '{key}' entry '{name}' must be relative to the "
                "subject folder, found an absolute path.")
    return files


def _parse_volume_group(name, entry, where):
    _check_keys(entry, VOLUME_KEYS, where)
    standardization = entry.get("standardization", "none")
    if standardization not in STANDARDIZATIONS:
        raise DwiMLUserError(
            f"{where}: 'standardization' must be one of "
            f"{list(STANDARDIZATIONS)}, found {standardization!r}.")
    if entry.get("std_mask") and standardization == "none":
        logging.warning("%s: 'std_mask' is ignored with standardization "
                        "'none'.", where)
    return VolumeGroupConfig(
        name=name,
        files=_relative_files(entry, "files", where, required=True),
        standardization=standardization,
        std_mask=_relative_files(entry, "std_mask", where, required=False))


def _parse_streamline_group(name, entry, volume_names, where):
    _check_keys(entry, STREAMLINE_KEYS, where)
    reference = entry.get("reference",
                          volume_names[0] if volume_names else None)
    if reference is not None and reference not in volume_names:
        raise DwiMLUserError(
            f"{where}: 'reference' must name a volume group among "
            f"{volume_names}, found {reference!r}.")
    dps_keys = _string_list(entry, "dps_keys", where, required=False,
                            what="key names")
    return StreamlineGroupConfig(
        name=name,
        files=_relative_files(entry, "files", where, required=True),
        reference=reference,
        dps_keys=dps_keys,
        connectivity=parse_connectivity_config(entry, where))
