"""Check one subject's files before any data is written.

:func:`check_subject_files` resolves the config's patterns, reads every
NIfTI header and every .trk/.trx header, and checks that grids agree.
:func:`check_subject_data` reads the volumes and connectivity files whole.
Tractograms, the largest inputs, are read once, when written: their data
checks (truncation, NaN, empty files, streamlines outside the volume, dps
keys) run as each file is loaded (``tractograms.load_tractogram_file``),
and a failure there removes the temporary output.
"""
import os
from dataclasses import dataclass
from typing import Dict, Tuple

from dwi_ml.data.hdf5.connectivity import load_group_connectivity
from dwi_ml.data.hdf5.subjects import describe, resolve_files
from dwi_ml.data.hdf5.tractograms import check_tractogram_header
from dwi_ml.data.hdf5.volumes import (
    VolumeGrid,
    load_std_mask,
    load_volume,
    read_volume_grid,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.tractogram_files import TRACTOGRAM_EXTENSIONS, tractogram_extension


@dataclass(frozen=True)
class VolumeGroupFiles:
    """A subject's files for one volume group, on one ``grid``, and the
    group's features (those of its files, concatenated)."""
    files: Tuple[str, ...]
    mask_files: Tuple[str, ...]
    grid: VolumeGrid
    nb_features: int


@dataclass(frozen=True)
class StreamlineGroupFiles:
    """A subject's tractograms for one group and their grid's ``reference``.

    ``reference`` is the first file of the reference volume group, or the
    group's first tractogram when the config has no volume group.
    ``connectivity_files`` holds the connectivity matrix and, with labels,
    the label volume (empty without connectivity).
    """
    files: Tuple[str, ...]
    reference: str
    connectivity_files: Tuple[str, ...] = ()


@dataclass(frozen=True)
class SubjectFiles:
    """Every file of one subject, by group name."""
    subject: str
    volume_groups: Dict[str, VolumeGroupFiles]
    streamline_groups: Dict[str, StreamlineGroupFiles]


def check_subject_files(subject_folder, subject, config):
    """Resolve and check one subject's files against the config.

    Parameters
    ----------
    subject_folder : str
        The subject's folder.
    subject : str
        The subject's ID, named in errors.
    config : GroupsConfig

    Returns
    -------
    SubjectFiles

    Raises
    ------
    DwiMLUserError
        A missing file, a file that is not 3-D/4-D NIfTI, two files (or two
        volume groups, or a mask) on different grids, a tractogram of an
        unsupported type or whose header does not match its reference.
    """
    volume_groups = {}
    first_group = None
    for group_config in config.volume_groups:
        group = group_config.name
        files = resolve_files(subject_folder, group_config.files, subject,
                              group)
        grid, nb_features = _check_same_grid(files, subject, group)
        mask_files = ()
        if group_config.standardization != "none":
            mask_files = resolve_files(subject_folder, group_config.std_mask,
                                       subject, group, key="std_mask")
            _check_masks(mask_files, grid, files[0], subject, group)
        if first_group is not None:
            first = volume_groups[first_group]
            if not grid.matches(first.grid):
                raise DwiMLUserError(
                    f"{describe(subject, group, files[0])}: has {grid}, but "
                    f"volume group '{first_group}' ('{first.files[0]}') has "
                    f"{first.grid}; all volume groups must share one grid.")
        else:
            first_group = group
        volume_groups[group] = VolumeGroupFiles(tuple(files),
                                                tuple(mask_files), grid,
                                                nb_features)

    streamline_groups = {}
    for group_config in config.streamline_groups:
        group = group_config.name
        files = resolve_files(subject_folder, group_config.files, subject,
                              group)
        if group_config.reference is not None:
            reference = volume_groups[group_config.reference].files[0]
        else:
            reference = files[0]
        for path in files:
            extension = tractogram_extension(path)
            if extension not in TRACTOGRAM_EXTENSIONS:
                raise DwiMLUserError(
                    f"{describe(subject, group, path)}: expected a tractogram "
                    f"{list(TRACTOGRAM_EXTENSIONS)}, found '{extension}'.")
            if extension == ".trx" and not path.endswith(".trx"):
                # dipy, which reads .trx, accepts no other spelling.
                raise DwiMLUserError(
                    f"{describe(subject, group, path)}: expected a lower-case "
                    f"extension '.trx' (dipy reads no other), found "
                    f"'{os.path.splitext(path)[1]}'.")
            if extension == ".tck" and group_config.reference is None:
                raise DwiMLUserError(
                    f"{describe(subject, group, path)}: a .tck file has no "
                    "grid; add a volume group to the config to serve as its "
                    "'reference'.")
            if extension != ".tck" and path != reference:
                check_tractogram_header(path, reference, subject, group)
        connectivity = group_config.connectivity
        connectivity_files = () if connectivity is None else tuple(
            resolve_files(subject_folder, [name for name in (
                connectivity.matrix_file, connectivity.labels_file) if name],
                subject, group))
        streamline_groups[group] = StreamlineGroupFiles(
            tuple(files), reference, connectivity_files)
    return SubjectFiles(subject, volume_groups, streamline_groups)


def check_subject_data(subject_files, config):
    """Read a subject's volumes and connectivity files whole, and check them.

    At most one file is held in memory at a time. Tractograms are checked
    when they are loaded for writing (see the module docstring).

    Parameters
    ----------
    subject_files : SubjectFiles
        From :func:`check_subject_files`.
    config : GroupsConfig

    Raises
    ------
    DwiMLUserError
        A file whose data cannot be read (truncated, corrupt), NaN or Inf
        in a volume, an empty mask, or a bad connectivity file.
    """
    subject = subject_files.subject
    for group_config in config.volume_groups:
        group = group_config.name
        files = subject_files.volume_groups[group]
        for path in files.files:
            load_volume(path, subject, group)
        if files.mask_files:
            load_std_mask(files.mask_files, subject, group)
    for group_config in config.streamline_groups:
        if group_config.connectivity is not None:
            load_group_connectivity(
                group_config,
                subject_files.streamline_groups[group_config.name], subject)


def _check_same_grid(files, subject, group):
    """Return the grid of ``files[0]`` and the files' total features;
    refuse a file on another grid."""
    grid, nb_features = read_volume_grid(files[0], subject, group)
    for path in files[1:]:
        other, other_features = read_volume_grid(path, subject, group)
        if not other.matches(grid):
            raise DwiMLUserError(
                f"{describe(subject, group, path)}: has {other}, but "
                f"'{files[0]}' has {grid}; files of a group must share one "
                "grid.")
        nb_features += other_features
    return grid, nb_features


def check_same_features(all_subject_files):
    """Refuse subjects whose volume group has another number of features
    than the first subject's: a model takes one input width.

    Parameters
    ----------
    all_subject_files : list of SubjectFiles
        From :func:`check_subject_files`, one per subject.

    Raises
    ------
    DwiMLUserError
        Naming the subject, the group, its files and both counts.
    """
    first = all_subject_files[0]
    for subject_files in all_subject_files[1:]:
        for group, files in subject_files.volume_groups.items():
            expected = first.volume_groups[group].nb_features
            if files.nb_features != expected:
                raise DwiMLUserError(
                    f"subject '{subject_files.subject}', volume group "
                    f"'{group}': expected {expected} features, as subject "
                    f"'{first.subject}', found {files.nb_features} in "
                    f"{list(files.files)}; every subject's group must have "
                    "the same features.")


def _check_masks(mask_files, grid, first_file, subject, group):
    for path in mask_files:
        mask_grid, nb_features = read_volume_grid(path, subject, group)
        if nb_features != 1:
            raise DwiMLUserError(
                f"{describe(subject, group, path)}: a std_mask must be a 3-D "
                f"volume, found {nb_features} features.")
        if not mask_grid.matches(grid):
            raise DwiMLUserError(
                f"{describe(subject, group, path)}: std_mask has {mask_grid}, "
                f"but '{first_file}' has {grid}.")
