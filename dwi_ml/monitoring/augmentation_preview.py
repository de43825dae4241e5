"""A subject's streamlines as the training batches hold them, to look at.

:func:`preview_subject_augmentations` reads one subject's streamlines
through the batch loader itself
(:meth:`~dwi_ml.batching.batch_loader.BatchLoaderOneInput.load_streamlines`):
the model's format, then split, reverse and noise, with the loader's draws
for the seed. The loader draws the noise last, so a second loader of the same
seed without noise draws the same splits and reversals: the difference
between the two is each point's noise displacement.

Points are in voxel space with a corner origin until they are saved, in RAS
mm (:func:`save_preview_tractogram`).
"""
from dataclasses import dataclass

import numpy as np

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset import MultiSubjectDataset, MultiSubjectSubset
from dwi_ml.data.hdf5.layout import SPLITS
from dwi_ml.data.packed import make_array_sequence, offsets_from_lengths
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.tracking_io import save_tractogram_atomic
from dwi_ml.training.evaluation import spread_ids

NOISE_OPTIONS = ("noise_gaussian_size_forward", "noise_gaussian_size_loss")
# Which points of a batch to show: those the model reads its inputs at
# (forward noise) or the streamlines its loss compares to (loss noise).
SHOWN_POINTS = {"input": "input_points", "target": "targets"}
SOURCE_KEY = "source_id"
NOISE_KEY = "noise_mm"
NOISE_NORM_KEY = "noise_norm_mm"


@dataclass
class AugmentationPreview:
    """One subject's streamlines as a batch holds them.

    Attributes
    ----------
    streamlines : nibabel ArraySequence
        Voxel space, corner origin, float32, packed (P points in all).
    source_ids : np.ndarray (N,), int64
        Index in the streamline group of the streamline each one comes
        from (the two pieces of a split streamline share it).
    noise_mm : np.ndarray (P, 3), float32
        Each point's displacement by the noise, in RAS mm (zero without
        noise).
    nb_sources : int
        Streamlines read from the group.
    affine : np.ndarray (4, 4)
        Voxel (centre) to RAS mm of the streamline group's grid.
    dimensions : tuple of 3 int
        That grid's shape.
    """
    streamlines: object
    source_ids: np.ndarray
    noise_mm: np.ndarray
    nb_sources: int
    affine: np.ndarray
    dimensions: tuple


def load_subject_as(hdf5_file, subject_id, streamline_group, split):
    """A lazy dataset holding one subject, in the subset of ``split``.

    The loader augments the batches of the training subset only: to see a
    subject as a training batch holds it, whatever its split in the file,
    it goes in the training subset (``split`` 'training'); in the
    validation or testing subset, its batch is only brought to the format.

    Returns
    -------
    MultiSubjectDataset
        Lazy (only lengths are read); close it when done.
    """
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject_id,
                      streamline_groups=[streamline_group])
    _, subject = _only_subject(dataset)
    for name in SPLITS:
        setattr(dataset, f"{name}_set", MultiSubjectSubset(
            name, [subject] if name == Split(split) else []))
    return dataset


def _only_subject(dataset):
    """The split and the SubjectData of the one subject of ``dataset``."""
    split = next(name for name in SPLITS
                 if getattr(dataset, f"{name}_set").nb_subjects)
    return split, getattr(dataset, f"{split}_set").get_subject(0)


def loaded_subject_group(dataset, streamline_group):
    """The split of the one subject of ``dataset`` and its streamlines of
    ``streamline_group`` (a lazy ``SFTData``)."""
    split, subject = _only_subject(dataset)
    return split, subject.sft_data_list[
        dataset.streamline_groups.index(streamline_group)]


def choose_ids(nb_streamlines, streamline_ids=None, max_streamlines=None,
               where="streamline group"):
    """The streamline ids to show: ``streamline_ids``, or up to
    ``max_streamlines`` spread over the group, or all.

    Raises
    ------
    DwiMLUserError
        An id outside ``[0, nb_streamlines)``, or a group without
        streamlines; ``where`` names the group.
    """
    if not nb_streamlines:
        raise DwiMLUserError(f"{where}: expected streamlines, found none.")
    if streamline_ids is None:
        return spread_ids(nb_streamlines, max_streamlines)
    ids = np.asarray(streamline_ids, dtype=np.int64)
    outside = ids[(ids < 0) | (ids >= nb_streamlines)]
    if len(outside):
        raise DwiMLUserError(
            f"--streamline_ids: expected ids in [0, {nb_streamlines}) "
            f"({where} has {nb_streamlines} streamlines), found "
            f"{int(outside[0])}.")
    return ids


def preview_subject_augmentations(dataset, streamline_group, ids,
                                  augmentations, streamline_format=None,
                                  points="input", seed=1234):
    """Streamlines ``ids`` of the one subject of ``dataset`` as the batch
    loader gives them to the model.

    Parameters
    ----------
    dataset : MultiSubjectDataset
        From :func:`load_subject_as`: its one subject is in the subset of
        the split to show.
    streamline_group : str
    ids : np.ndarray of int
        Streamline ids in the group, in the batch's order.
    augmentations : dict
        The loader's ``split_ratio``, ``reverse_ratio``,
        ``noise_gaussian_size_forward`` and ``noise_gaussian_size_loss``.
    streamline_format : StreamlineFormat or None
        The model's format; None keeps the stored one.
    points : str
        A key of ``SHOWN_POINTS``: 'input' or 'target'.
    seed : int
        The loader's seed; the batch is batch 0 of epoch 0.

    Returns
    -------
    AugmentationPreview
    """
    split, sft_data = loaded_subject_group(dataset, streamline_group)
    if not dataset.volume_groups:
        raise DwiMLUserError(
            f"HDF5 file '{dataset.hdf5_file}': expected a volume group to "
            "read streamlines through, found none.")
    spec = InputSpec(streamline_format=streamline_format) \
        if streamline_format is not None else InputSpec()
    request = BatchRequest(split, 0, 0, [(0, np.asarray(ids))])

    def load(options):
        # No input is interpolated (load_streamlines): any volume group
        # will do.
        loader = BatchLoaderOneInput(dataset, streamline_group,
                                     dataset.volume_groups[0],
                                     input_spec=spec, seed=seed, **options)
        return loader.load_streamlines(request)[0]
    augmented = load(augmentations)
    clean = load({**augmentations, **dict.fromkeys(NOISE_OPTIONS, 0.0)})
    shown = getattr(augmented, SHOWN_POINTS[points])
    affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
    noise_vox = shown.astype(np.float64) - clean.targets
    return AugmentationPreview(
        streamlines=make_array_sequence(
            shown, offsets_from_lengths(augmented.lengths), augmented.lengths),
        source_ids=np.asarray(ids, dtype=np.int64)[augmented.source_ids],
        noise_mm=(noise_vox @ affine[:3, :3].T).astype(np.float32),
        nb_sources=len(ids), affine=affine,
        dimensions=tuple(int(n) for n in sft_data.space_attributes[1]))


def save_preview_tractogram(preview, out_path):
    """Write the streamlines in RAS mm (.trk or .trx), with each one's
    source id (``data_per_streamline`` 'source_id') and each point's noise
    (``data_per_point`` 'noise_mm', 3 values, and its norm
    'noise_norm_mm')."""
    streamlines = preview.streamlines
    norms = np.linalg.norm(preview.noise_mm, axis=1, keepdims=True)

    def per_point(values):
        return make_array_sequence(values, streamlines._offsets,
                                   streamlines._lengths)
    save_tractogram_atomic(
        streamlines, preview.affine, preview.dimensions, out_path,
        data_per_streamline={SOURCE_KEY: preview.source_ids[:, None]},
        data_per_point={NOISE_KEY: per_point(preview.noise_mm),
                        NOISE_NORM_KEY: per_point(norms)},
        bbox_valid_check=False)


def summarize(preview):
    """One line: streamlines in and out, mean and max noise in mm."""
    norms = np.linalg.norm(preview.noise_mm, axis=1)
    return (f"{preview.nb_sources} streamlines in, "
            f"{len(preview.streamlines)} out, {len(norms)} points; noise "
            f"displacement: mean {norms.mean():.4f} mm, max "
            f"{norms.max():.4f} mm.")
