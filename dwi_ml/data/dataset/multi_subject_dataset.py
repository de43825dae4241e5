"""All subjects of a dwi_ml HDF5 file, split into training/validation/testing."""
import logging

import numpy as np

from dwi_ml.data.dataset.hdf5_handle import Hdf5Handle
from dwi_ml.data.dataset.lru_cache import LRUCache
from dwi_ml.data.dataset.subjects import load_subject, read_group_signatures
from dwi_ml.data.dataset.subsets import MultiSubjectSubset
from dwi_ml.data.hdf5.file_check import (
    check_dwiml_hdf5,
    hdf5_read_errors,
    read_hdf5_streamline_format,
)
from dwi_ml.data.hdf5.layout import (
    SPLITS,
    STREAMLINES_TYPE,
    VOLUME_TYPE,
    parse_groups_config,
    read_subject_list,
)
from dwi_ml.data.hdf5.volumes import AFFINE_TOLERANCE_MM
from dwi_ml.data.processing.grid_frames import describe_grid, grids_alike
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.arg_checks import check_bool, check_choice, check_int
from dwi_ml.io_utils.errors import DwiMLUserError

# Lazy mode keeps at most this many bytes of volumes per process (and so per
# DataLoader worker). No bound on their number unless cache_size is given.
logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE_BYTES = 1024 ** 3


def _names(names):
    return ", ".join(names) if names else "none"


class MultiSubjectDataset:
    """The subjects of an HDF5 file in the dwi_ml layout, eager or lazy.

    Parameters
    ----------
    hdf5_file : str
        A file in the reference dwi_ml layout.
    lazy : bool
        False reads every volume and streamline into RAM at
        :meth:`load_data`. True reads only metadata and per-streamline
        lengths then; volumes and points are read when asked for, through
        one h5py handle per process (safe in ``DataLoader`` workers).
    cache_size : int or None
        Lazy mode: keep at most this many volumes (per device) in the LRU
        cache; 0 disables the cache. Default None: no bound on the number.
    cache_size_bytes : int or None
        Lazy mode: keep at most this many bytes of volumes. Default 1 GiB
        (``DEFAULT_CACHE_SIZE_BYTES``), per process; None for no bound.

    Attributes
    ----------
    volume_groups, streamline_groups : list of str
    nb_features : list of int
        Aligned with ``volume_groups``.
    step_size, nb_points, compress : float, int, float or None
        The creation options; None when 'Not defined by user'.
    groups_config : dict or None
        The creation config stored in the file; None when there is none,
        or one that cannot be parsed.
    training_set, validation_set, testing_set : MultiSubjectSubset
    """

    def __init__(self, hdf5_file, lazy=False, cache_size=None,
                 cache_size_bytes=DEFAULT_CACHE_SIZE_BYTES):
        owner = type(self).__name__
        self.hdf5_file = str(hdf5_file)
        self.lazy = check_bool("lazy", lazy, owner)
        if cache_size is not None:
            check_int("cache_size", cache_size, 0, owner)
        if cache_size_bytes is not None:
            check_int("cache_size_bytes", cache_size_bytes, 0, owner)
        self.volume_cache = LRUCache(cache_size, cache_size_bytes)
        self._handle = None
        self.volume_groups = []
        self.nb_features = []
        self.streamline_groups = []
        self.step_size = None
        self.nb_points = None
        self.compress = None
        self.groups_config = None
        self.training_set = MultiSubjectSubset("training")
        self.validation_set = MultiSubjectSubset("validation")
        self.testing_set = MultiSubjectSubset("testing")

    @property
    def streamline_format(self):
        """The :class:`StreamlineFormat` the HDF5's streamlines were stored in."""
        return StreamlineFormat(self.step_size, self.nb_points, self.compress)

    def load_data(self, load_training=True, load_validation=True,
                  load_testing=True, subj_id=None, volume_groups=None,
                  streamline_groups=None):
        """Read the file's subjects (all data if eager, metadata if lazy).

        Parameters
        ----------
        load_training, load_validation, load_testing : bool
            Which splits to load; the others stay empty.
        subj_id : str or list of str, optional
            Load only these subjects (in whichever loaded split they are).
        volume_groups, streamline_groups : list of str or str, optional
            Load only these groups (or this one), in this order. Default: all, in
            alphabetical order.
        """
        for name, value in (("load_training", load_training),
                            ("load_validation", load_validation),
                            ("load_testing", load_testing)):
            check_bool(name, value, "load_data")
        volume_groups = _group_names("volume_groups", volume_groups)
        streamline_groups = _group_names("streamline_groups",
                                         streamline_groups)
        check_dwiml_hdf5(self.hdf5_file)
        self.close()
        self.volume_cache.clear()
        handle = Hdf5Handle(self.hdf5_file)
        try:
            with hdf5_read_errors(self.hdf5_file):
                self._load(handle, {"training": load_training,
                                    "validation": load_validation,
                                    "testing": load_testing},
                           subj_id, volume_groups, streamline_groups)
        except BaseException:
            # A refused lazy load kept the file open (and locked).
            handle.close()
            raise
        if self.lazy:
            self._handle = handle
        else:
            handle.close()

    def check_same_grid(self, volume_group, streamline_group):
        """Refuse subjects whose streamlines are not on the volume's grid.

        Points are in the voxel space of the streamline group's reference
        (its ``affine`` and ``dimensions``) and are interpolated in the
        volume's: both grids must be the same (affines within
        ``AFFINE_TOLERANCE_MM``, as the HDF5 creation checks).
        """
        volume_idx = self._group_index("volume_group", volume_group,
                                       self.volume_groups)
        streamline_idx = self._group_index("streamline_group",
                                           streamline_group,
                                           self.streamline_groups)
        for subject in self._loaded_subjects():
            volume = subject.mri_data_list[volume_idx]
            affine, dimensions = subject.sft_data_list[
                streamline_idx].space_attributes[:2]
            shape = tuple(int(n) for n in dimensions)
            if shape == tuple(volume.shape[:3]) and np.allclose(
                    affine, volume.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
                continue
            raise DwiMLUserError(
                f"HDF5 file {self.hdf5_file}, subject "
                f"'{subject.subject_id}': expected streamline group "
                f"'{streamline_group}' on the grid of volume group "
                f"'{volume_group}' (shape {tuple(volume.shape[:3])}, "
                f"affine {np.round(volume.affine, 4).tolist()}), found "
                f"shape {shape}, affine {np.round(affine, 4).tolist()}: "
                "its points would be interpolated on the wrong grid.")

    def _loaded_subjects(self):
        """Every loaded subject: training, then validation, then testing."""
        for subset in (self.training_set, self.validation_set,
                       self.testing_set):
            for subj_idx in range(subset.nb_subjects):
                yield subset.get_subject(subj_idx)

    def voxel_orientations(self, volume_group):
        """The loaded subjects of each voxel orientation of ``volume_group``.

        Returns
        -------
        dict of str to list of str
            Axis codes (nibabel's ``aff2axcodes``, e.g. 'LAS') to subject
            ids, in the order met.
        """
        import nibabel as nib

        volume_idx = self._group_index("volume_group", volume_group,
                                       self.volume_groups)
        found = {}
        for subject in self._loaded_subjects():
            codes = "".join(nib.aff2axcodes(
                subject.mri_data_list[volume_idx].affine))
            found.setdefault(codes, []).append(subject.subject_id)
        return found

    def voxel_grid_kinds(self, volume_group):
        """The loaded subjects of ``volume_group`` grouped by voxel grid:
        subjects share a kind when their voxel axes point the same ways
        and their voxels have the same shape (``grids_alike``; the origin
        and an isotropic scale do not count).

        Returns
        -------
        list of (str, list of str)
            Each kind's description (e.g. 'LPS, 2 x 2 x 2.5 mm voxels', of
            its first subject) and its subject ids, in the order met.
        """
        volume_idx = self._group_index("volume_group", volume_group,
                                       self.volume_groups)
        kinds = []  # (affine of the first subject, description, ids)
        for subject in self._loaded_subjects():
            affine = subject.mri_data_list[volume_idx].affine
            kind = next((kind for kind in kinds
                         if grids_alike(affine, kind[0])), None)
            if kind is None:
                kind = (affine, describe_grid(affine), [])
                kinds.append(kind)
            kind[2].append(subject.subject_id)
        return [(description, ids) for _, description, ids in kinds]

    def warn_mixed_orientations(self, volume_group):
        """Warn, in one line, when the loaded subjects' ``volume_group``
        lies on voxel grids of several kinds (flipped, permuted or rotated
        axes, or voxels of another shape): models see directions in voxel
        space, where one RAS direction is another on each."""
        kinds = self.voxel_grid_kinds(volume_group)
        if len(kinds) < 2:
            return
        listed = "; ".join(
            f"{description}: {', '.join(ids[:3])}"
            f"{' ...' if len(ids) > 3 else ''}" for description, ids in kinds)
        logger.warning(
            "HDF5 file %s, volume group '%s': subjects on %d kinds of voxel "
            "grid (%s); a model learns directions in voxel space, where "
            "they differ: resample or reorient the subjects alike (e.g. to "
            "RAS, one voxel size) before creating the HDF5.", self.hdf5_file,
            volume_group, len(kinds), listed)

    def _group_index(self, argument, name, groups):
        """Index of ``name`` in the loaded ``groups``, or a user error
        naming ``argument``."""
        check_choice(argument, name, groups, type(self).__name__)
        return groups.index(name)

    def close(self):
        """Close the lazy file handle of this process, if any."""
        if self._handle is not None:
            self._handle.close()

    def _load(self, handle, wanted_splits, subj_id, volume_groups,
              streamline_groups):
        attrs = handle.file.attrs
        all_splits = {split: sorted(read_subject_list(attrs, split))
                      for split in SPLITS}
        splits = {split: subjects if wanted_splits[split] else []
                  for split, subjects in all_splits.items()}
        if subj_id is not None:
            splits = self._keep_subjects(splits, subj_id)
        loaded_ids = list(dict.fromkeys(
            subject for subjects in splits.values() for subject in subjects))
        reference_id = (loaded_ids or [s for subjects in all_splits.values()
                                       for s in subjects] or [None])[0]
        reference = ({} if reference_id is None
                     else read_group_signatures(handle, reference_id))
        self.volume_groups = self._choose_groups(
            reference, reference_id, VOLUME_TYPE, volume_groups)
        self.streamline_groups = self._choose_groups(
            reference, reference_id, STREAMLINES_TYPE, streamline_groups)
        self.nb_features = [reference[name][1] for name in self.volume_groups]
        for subject in loaded_ids:
            self._check_same_groups(
                read_group_signatures(handle, subject), subject, reference,
                reference_id, volume_groups is None,
                streamline_groups is None)
        for key, value in read_hdf5_streamline_format(
                self.hdf5_file, attrs).items():
            setattr(self, key, value)
        self.groups_config = (parse_groups_config(attrs["groups_config"])
                              if "groups_config" in attrs else None)
        subjects_data = {
            subject: load_subject(handle, subject, self.volume_groups,
                                  self.streamline_groups, self.lazy,
                                  self.volume_cache)
            for subject in loaded_ids}
        for split in SPLITS:
            setattr(self, f"{split}_set", MultiSubjectSubset(
                split, [subjects_data[s] for s in splits[split]]))

    def _keep_subjects(self, splits, subj_id):
        wanted = [subj_id] if isinstance(subj_id, str) else list(subj_id)
        available = sorted({s for subjects in splits.values()
                            for s in subjects})
        unknown = [s for s in wanted if s not in available]
        if unknown:
            loaded = [split for split, subjects in splits.items() if subjects]
            raise DwiMLUserError(
                f"HDF5 file {self.hdf5_file}: unknown subject id "
                f"'{unknown[0]}'; subjects of the loaded splits "
                f"({_names(loaded)}): {_names(available)}.")
        return {split: [s for s in subjects if s in wanted]
                for split, subjects in splits.items()}

    def _choose_groups(self, reference, reference_id, group_type, requested):
        available = [name for name, (kind, _) in reference.items()
                     if kind == group_type]
        if requested is None:
            return available
        for name in requested:
            if name not in available:
                raise DwiMLUserError(
                    f"HDF5 file {self.hdf5_file}: no {group_type} group "
                    f"'{name}' in subject '{reference_id}'; available "
                    f"{group_type} groups: {_names(available)}.")
        return list(requested)

    def _check_same_groups(self, signatures, subject, reference,
                           reference_id, all_volumes, all_streamlines):
        where = f"HDF5 file {self.hdf5_file}: subject '{subject}'"
        for name in self.volume_groups + self.streamline_groups:
            expected_type, expected_features = reference[name]
            if name not in signatures:
                raise DwiMLUserError(
                    f"{where}: expected a {expected_type} group '{name}' as "
                    f"in subject '{reference_id}', found only groups "
                    f"[{_names(list(signatures))}].")
            found_type, found_features = signatures[name]
            if found_type != expected_type:
                raise DwiMLUserError(
                    f"{where}, group '{name}': expected type '{expected_type}'"
                    f" as in subject '{reference_id}', found '{found_type}'.")
            if found_features != expected_features:
                raise DwiMLUserError(
                    f"{where}, group '{name}': expected {expected_features} "
                    f"features as in subject '{reference_id}', found "
                    f"{found_features}.")
        checked_types = ([VOLUME_TYPE] * all_volumes
                         + [STREAMLINES_TYPE] * all_streamlines)
        for name, (kind, _) in signatures.items():
            if kind in checked_types and name not in reference:
                raise DwiMLUserError(
                    f"{where}, group '{name}': expected no such group as in "
                    f"subject '{reference_id}', found a {kind} group.")


def _group_names(argument, names):
    """``names`` as a list (one name alone as a list of one): a string was
    taken as a list of its letters. Refuses a name given twice."""
    if names is None:
        return None
    names = [names] if isinstance(names, str) else list(names)
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise DwiMLUserError(
            f"load_data argument {argument}: expected each group once, "
            f"found '{repeated}' {names.count(repeated)} times.")
    return names
