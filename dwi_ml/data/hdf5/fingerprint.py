"""A fingerprint of a dwi_ml HDF5 file: what a trained model depends on.

Stored in an experiment's ``parameters.json`` (``dataset.fingerprint``) at
training time and compared on resume, so that resuming on another file is a
decision of the user, not an accident. It is cheap: root attributes, and
the groups, shapes, dtypes and attributes of every subject; no data is
read.

So data edited in place after creation (same shapes, same attributes) is
not seen here: the readers see it, by the CRC-32s our writer stores (a
volume group's attr ``data_crc32``, which the fingerprint records among
its attrs, and the streamline dataset ``data_crc32``) and checks on the
reads they make anyway (``dwi_ml.data.dataset``).
"""
import h5py
import numpy as np

from dwi_ml.data.hdf5.layout import SPLITS, decode_str, read_subject_list

# Root attrs describing how the file was made (the split lists are kept
# apart; groups_config is compared as text).
CREATION_ATTRS = ("step_size", "nb_points", "compress", "groups_config",
                  "data_and_time", "version")
# Differences are reported in this order: the content before how it was
# made, and the creation date last (any re-creation changes it).
_KEY_ORDER = {"splits": 0, "subjects": 1, "creation": 2, "data_and_time": 3}


def _plain(value):
    """An attr as JSON-friendly values (lists, numbers, str)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SUO":
            return [decode_str(v) for v in value.ravel()]
        return np.round(value.astype(np.float64), 6).tolist() \
            if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, (bytes, str)):
        return decode_str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _describe_group(group):
    description = {"attrs": {key: _plain(value)
                             for key, value in sorted(group.attrs.items())}}
    datasets = {}

    def add(name, item):
        if isinstance(item, h5py.Dataset):
            datasets[name] = {"shape": list(item.shape),
                              "dtype": str(item.dtype)}
    group.visititems(add)
    description["datasets"] = dict(sorted(datasets.items()))
    return description


def compute_hdf5_fingerprint(path):
    """Describe a dwi_ml HDF5 file without reading its data.

    Parameters
    ----------
    path : str
        A file that passed :func:`~dwi_ml.data.hdf5.file_check.check_dwiml_hdf5`.

    Returns
    -------
    dict
        JSON-serializable: ``splits`` (subject IDs per split), ``creation``
        (the root attrs of :data:`CREATION_ATTRS` present) and ``subjects``
        (per subject, per group: its attrs, e.g. type and nb_features, and
        the shape and dtype of each dataset, e.g. the number of
        streamlines as the shape of ``lengths``).
    """
    with h5py.File(path, "r") as hdf_file:
        attrs = hdf_file.attrs
        splits = {split: sorted(read_subject_list(attrs, split))
                  for split in SPLITS}
        creation = {key: _plain(attrs[key]) for key in CREATION_ATTRS
                    if key in attrs}
        subjects = {}
        for subject in sorted({s for names in splits.values() for s in names}):
            subjects[subject] = {
                name: _describe_group(group)
                for name, group in hdf_file[subject].items()
                if isinstance(group, h5py.Group)}
    return {"splits": splits, "creation": creation, "subjects": subjects}


# The creation attrs that set the streamlines' format: a model without its
# own format trains and tracks at the file's.
STREAMLINE_FORMAT_ATTRS = ("step_size", "nb_points", "compress")


def streamline_format_differences(saved, found):
    """``{attr: (saved, found)}`` for the creation attrs of
    :data:`STREAMLINE_FORMAT_ATTRS` that differ between two fingerprints
    (None: absent)."""
    saved_creation = (saved or {}).get("creation", {})
    found_creation = (found or {}).get("creation", {})
    return {key: (saved_creation.get(key), found_creation.get(key))
            for key in STREAMLINE_FORMAT_ATTRS
            if saved_creation.get(key) != found_creation.get(key)}


def first_fingerprint_difference(saved, found, where=""):
    """The first difference between two fingerprints, as one line, or None.

    Splits, then subjects, then creation attrs (the date last) are
    compared, other keys in sorted order, so the answer is stable and
    names the most telling difference. Example:
    ``"subjects/subj-01/input/datasets/data/shape: saved [24, 24, 16, 45],
    found [24, 24, 16, 44]"``.
    """
    if isinstance(saved, dict) and isinstance(found, dict):
        for key in sorted(set(saved) | set(found),
                          key=lambda k: (_KEY_ORDER.get(k, 1), str(k))):
            path = f"{where}/{key}" if where else str(key)
            if key not in found:
                return f"{path}: saved, but absent from the file"
            if key not in saved:
                return f"{path}: present in the file, not saved"
            difference = first_fingerprint_difference(saved[key], found[key],
                                                      path)
            if difference is not None:
                return difference
        return None
    if saved != found:
        return f"{where}: saved {_short(saved)}, found {_short(found)}"
    return None


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
