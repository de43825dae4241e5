"""Tests of BatchLoaderOneInput, LoadedBatch and make_dataloader.

Two tiny HDF5 files, built once for the module:

- a REFERENCE-layout file (``reference_hdf5.py``): streamlines of 2 to 11
  points (some too short to split), stored with gaps and shuffled, 2 mm
  isotropic voxels, and one validation streamline through voxel centres;
- a synthetic dataset (anisotropic 2 x 2.5 x 3 mm voxels) written by our
  own HDF5 creation, with two training subjects.
"""
import io
import pickle

import numpy as np
import pytest
import torch
from nibabel.streamlines import ArraySequence
from torch.utils.data import DataLoader

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.batching.dataloaders import BatchRequest, make_dataloader
from dwi_ml.batching.loaded_batch import LoadedBatch
from dwi_ml.data.dataset.multi_subject_dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.packed import make_array_sequence, subject_runs
from dwi_ml.data.processing.augmentation import (
    add_noise_mm,
    count_from_ratio,
    draw_noise_vox,
    open_ended_pieces,
    reverse_streamlines,
    split_streamlines,
)
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.interpolation import interpolate_volume_at_coordinates
from dwi_ml.data.processing.neighborhood import (
    get_neighborhood_offsets,
    interpolate_with_neighborhood,
)
from dwi_ml.data.processing.resampling import resample_to_step_size
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5
from tests.tolerances import EPS32, rounding_atol

VOXEL_SIZE_MM = np.array([2.0, 2.5, 3.0])  # synthetic, anisotropic
MIN_SPLIT_LENGTH = 5  # split_streamlines' default: 2 * 3 - 1 points
# Voxel centres (corner origin) inside the (8, 9, 10) reference volume.
CENTRE_VOXELS = np.array([[2, 2, 2], [3, 2, 2], [3, 3, 2], [4, 3, 3],
                          [4, 4, 4], [5, 4, 5]])
AUGMENTED = dict(split_ratio=0.5, reverse_ratio=0.5,
                 noise_gaussian_size_forward=0.3,
                 noise_gaussian_size_loss=0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(path, subjects): s1, s2 training, s3 validation."""
    rng = np.random.default_rng(7)
    subjects = {name: make_example_subject(
        rng, nb_streamlines=30, points_range=(2, 12), gap_rows=2,
        shuffle_storage=True) for name in ("s1", "s2", "s3")}
    subjects["s3"]["streamlines"].streamlines[0] = (
        CENTRE_VOXELS + 0.5).astype(np.float32)
    path = tmp_path_factory.mktemp("reference") / "reference.h5"
    write_reference_hdf5(path, subjects, training_subjs=["s1", "s2"],
                         validation_subjs=["s3"])
    return path, subjects


@pytest.fixture(scope="module")
def reference_eager(reference):
    return _load(reference[0], lazy=False)


@pytest.fixture(scope="module")
def reference_lazy(reference):
    return _load(reference[0], lazy=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Eager dataset: 2 training subjects, 7 features, anisotropic voxels."""
    folder = tmp_path_factory.mktemp("synthetic")
    paths = make_synthetic_dataset(
        str(folder / "data"), nb_subjects=4, nb_streamlines=30,
        shape=(12, 12, 10), voxel_size=tuple(VOXEL_SIZE_MM), nb_directions=6,
        seed=0)
    hdf5 = folder / "synthetic.h5"
    create_hdf5_dataset(paths.out_folder + "/dwi_ml_ready", str(hdf5),
                        paths.config, *(paths.splits[split] for split in
                                        ("training", "validation", "testing")))
    return _load(hdf5, lazy=False)


def _load(path, lazy):
    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    return dataset


def _all_ids(dataset, context):
    subset = (dataset.training_set if context == "training"
              else dataset.validation_set)
    return [(subj, np.arange(len(subset.get_lengths(subj, 0))))
            for subj in range(subset.nb_subjects)]


def _load_all(loader, context="training", epoch=0, batch_index=0):
    return loader.load_batch(BatchRequest(
        context, epoch, batch_index, _all_ids(loader.dataset, context)))


def _as_numpy(streamlines):
    return [s.numpy() for s in streamlines]


def _assert_same_batches(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for name in ("target_points", "input_points", "lengths",
                     "subject_indices", "inputs", "open_ends"):
            assert (getattr(a, name) is None) == (getattr(b, name) is None)
            if getattr(a, name) is not None:
                torch.testing.assert_close(getattr(a, name), getattr(b, name),
                                           rtol=0, atol=0)


def _differ(points_a, points_b):
    return points_a.shape != points_b.shape or not torch.equal(points_a,
                                                               points_b)


SPEC_OPTIONS = ("step_size", "nb_points", "compress", "neighborhood_type",
                "neighborhood_radius", "neighborhood_resolution")


def _loader(dataset, **kwargs):
    """A loader; the model's options (format, neighbourhood) go in its spec."""
    kwargs.setdefault("input_group", "input")
    spec = InputSpec.from_options(**{name: kwargs.pop(name)
                                     for name in SPEC_OPTIONS if name in kwargs})
    return BatchLoaderOneInput(dataset, "streamlines", input_spec=spec,
                               **kwargs)


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(split_ratio=1.5), "split_ratio"),
    (dict(reverse_ratio=-0.1), "reverse_ratio"),
    (dict(input_group="nope"), "input_group"),
    (dict(noise_gaussian_size_forward=-1.), "noise_gaussian_size_forward"),
    (dict(noise_gaussian_size_loss=float("nan")), "noise_gaussian_size_loss"),
    (dict(neighborhood_type="axes", neighborhood_resolution=1.),
     "neighborhood_radius"),
    (dict(neighborhood_type="sphere", neighborhood_radius=1,
          neighborhood_resolution=1.), "neighborhood_type"),
    (dict(step_size=1., nb_points=10), "step_size, nb_points"),
    (dict(step_size=-1.), "step_size"),
    (dict(nb_points=1), "nb_points"),
    (dict(seed=-3), "seed"),
    (dict(interpolation_device="gpu"), "interpolation_device"),
])
def test_bad_arguments_give_one_line_user_errors(reference_eager, kwargs,
                                                 name):
    with pytest.raises(DwiMLUserError) as error:
        _loader(reference_eager, **kwargs)
    message = str(error.value)
    assert "\n" not in message and name in message


def test_options_instead_of_an_input_spec_are_refused(reference_eager):
    """A dict of the spec's options was taken, then the first batch failed
    with an AttributeError."""
    with pytest.raises(DwiMLUserError, match=(
            r"BatchLoaderOneInput argument input_spec: expected an InputSpec "
            r"\(the model's input_spec\) or None, got \{'step_size': 1.0\}")):
        BatchLoaderOneInput(reference_eager, "streamlines", "input",
                            input_spec={"step_size": 1.0})


def test_unknown_streamline_group_is_a_user_error(reference_eager):
    with pytest.raises(DwiMLUserError, match="streamline_group.*'nope'"):
        BatchLoaderOneInput(reference_eager, "nope", "input")


def test_validation_batches_are_the_dataset_streamlines(reference,
                                                        reference_eager):
    batch = _load_all(_loader(reference_eager, **AUGMENTED), "validation")
    originals = reference[1]["s3"]["streamlines"].streamlines
    targets = _as_numpy(batch.target_streamlines())
    assert len(targets) == len(originals)
    for target, original in zip(targets, originals):
        np.testing.assert_array_equal(target, original)
    assert torch.equal(batch.input_points, batch.target_points)
    assert batch.split == "validation"
    assert batch.subject_indices.tolist() == [0] * len(originals)


def test_split_counts_are_exact_and_short_streamlines_stay_whole(
        reference, reference_eager):
    batch = _load_all(_loader(reference_eager, split_ratio=0.5))
    pieces = _as_numpy(batch.target_streamlines())
    subjects = batch.subject_indices.tolist()
    position = nb_split = nb_eligible = 0
    for subj, name in enumerate(("s1", "s2")):
        originals = reference[1][name]["streamlines"].streamlines
        lengths = np.array([len(s) for s in originals])
        assert min(lengths) < MIN_SPLIT_LENGTH  # some are too short
        nb_eligible += np.count_nonzero(lengths >= MIN_SPLIT_LENGTH)
        for original in originals:
            first = pieces[position]
            if len(first) == len(original):
                np.testing.assert_array_equal(first, original)
                position += 1
                continue
            second = pieces[position + 1]
            assert len(original) >= MIN_SPLIT_LENGTH
            assert min(len(first), len(second)) >= 3
            # Pieces share the cut point: nothing is lost.
            np.testing.assert_array_equal(
                np.concatenate((first, second[1:])), original)
            assert subjects[position] == subjects[position + 1] == subj
            position += 2
            nb_split += 1
    # The ratio counts over the batch, not subject by subject.
    assert nb_split == count_from_ratio(0.5, nb_eligible)
    assert position == len(pieces) == batch.nb_streamlines


def test_reversed_streamlines_are_exactly_reversed_originals(
        reference, reference_eager):
    batch = _load_all(_loader(reference_eager, reverse_ratio=0.5))
    streamlines = _as_numpy(batch.target_streamlines())
    originals = (reference[1]["s1"]["streamlines"].streamlines
                 + reference[1]["s2"]["streamlines"].streamlines)
    assert len(streamlines) == len(originals)
    nb_reversed = [0, 0]
    for streamline, original, subj in zip(streamlines, originals,
                                          batch.subject_indices.tolist()):
        if not np.array_equal(streamline, original):
            np.testing.assert_array_equal(streamline, original[::-1])
            nb_reversed[subj] += 1
    assert sum(nb_reversed) == count_from_ratio(0.5, 60)
    assert min(nb_reversed) > 0
    assert torch.equal(batch.input_points, batch.target_points)


def test_ratios_count_over_the_batch_when_subjects_bring_one_streamline(
        reference, reference_eager):
    # Six entries of one streamline each: counts rounded per entry (0.5 of
    # 1 is 1) reversed and split every one of them.
    lengths = [np.array([len(s) for s in reference[1][name][
        "streamlines"].streamlines]) for name in ("s1", "s2")]
    long_ids = [np.flatnonzero(subject_lengths >= MIN_SPLIT_LENGTH)[:3]
                for subject_lengths in lengths]
    entries = [(subj, long_ids[subj][i:i + 1])
               for i in range(3) for subj in (0, 1)]
    originals = [reference[1][("s1", "s2")[subj]]["streamlines"]
                 .streamlines[int(ids[0])] for subj, ids in entries]
    reversed_counts, split_counts = [], []
    for batch_index in range(20):
        request = BatchRequest("training", 0, batch_index, entries)
        batch = _loader(reference_eager, reverse_ratio=0.5).load_batch(
            request)
        streamlines = _as_numpy(batch.target_streamlines())
        reversed_counts.append(sum(
            not np.array_equal(streamline, original)
            for streamline, original in zip(streamlines, originals)))
        split = _loader(reference_eager, split_ratio=0.5).load_batch(request)
        split_counts.append(split.nb_streamlines - len(entries))
        # The two pieces of a split streamline stay in their entry.
        subjects = split.subject_indices.tolist()
        assert [subj for i, subj in enumerate(subjects)
                if i == 0 or subj != subjects[i - 1]] == [0, 1] * 3
    assert reversed_counts == [3] * 20
    assert split_counts == [3] * 20


def test_noise_is_drawn_once_and_scaled_to_each_subjects_voxels(tmp_path):
    # Subjects of 1, 2 and 2 mm voxels: one standard normal draw over the
    # batch's points, times sigma, in each subject's voxels.
    rng = np.random.default_rng(3)
    voxel_sizes = {"a": 1.0, "b": 2.0, "c": 2.0}
    subjects = {name: make_example_subject(rng, nb_streamlines=4,
                                           voxel_size=size)
                for name, size in voxel_sizes.items()}
    path = tmp_path / "voxel_sizes.h5"
    write_reference_hdf5(path, subjects, training_subjs=list(subjects))
    dataset = _load(path, lazy=False)
    sigma = 0.4
    loader = _loader(dataset, noise_gaussian_size_forward=sigma)
    request = BatchRequest("training", 1, 2, _all_ids(dataset, "training"))
    batch = loader.load_batch(request)
    standard = draw_noise_vox(batch.input_points.shape[0], 1.0, np.eye(4),
                              loader.make_generator(request))
    names = dataset.training_set.subjects
    points_voxel_size = np.repeat(
        [voxel_sizes[names[subj]] for subj in batch.subject_indices.tolist()],
        batch.lengths.numpy())
    clean = batch.target_points.numpy().astype(np.float64)
    expected = clean + standard * sigma / points_voxel_size[:, None]
    # The scale and the noise rounded to float32, then the sum.
    atol = rounding_atol(np.abs(clean).max() + 2 * sigma, 3)
    np.testing.assert_allclose(batch.input_points.numpy(), expected,
                               rtol=0, atol=atol)
    assert len(set(batch.subject_indices.tolist())) == 3


@pytest.mark.parametrize("dataset_name", ["reference_eager", "reference_lazy"])
@pytest.mark.parametrize("augmentations", [
    AUGMENTED,
    dict(split_ratio=0.5, noise_gaussian_size_forward=0.3,
         noise_gaussian_size_loss=0.2),
    dict(reverse_ratio=0.5, noise_gaussian_size_loss=0.2),
])
def test_batches_equal_the_augmentation_functions_applied_in_order(
        request, dataset_name, augmentations):
    # The loader augments row indices and gathers once; its batches must be
    # bit for bit those of the public functions, one after the other, on
    # the batch's get_streamlines, all subjects together (split, reverse,
    # forward noise, loss noise), drawn from the batch's generator. The
    # reference file stores streamlines with gaps and shuffled, so rows and
    # offsets differ from the output's. Its subjects share one affine.
    dataset = request.getfixturevalue(dataset_name)
    loader = _loader(dataset, **augmentations)
    batch_request = BatchRequest("training", 2, 5, _all_ids(dataset,
                                                            "training"))
    batch = loader.load_batch(batch_request)
    rng = loader.make_generator(batch_request)
    affine = np.asarray(dataset.training_set.get_subject(0).sft_data_list[
        0].space_attributes[0])
    streamlines = ArraySequence([
        streamline for subj, ids in batch_request.subject_ids
        for streamline in dataset.training_set.get_subject(
            subj).sft_data_list[0].get_streamlines(ids)])
    sources = is_reversed = None
    open_ends = []
    if loader.split_ratio:
        streamlines, sources = split_streamlines(streamlines,
                                                 loader.split_ratio, rng)
    if loader.reverse_ratio:
        streamlines, is_reversed = reverse_streamlines(
            streamlines, loader.reverse_ratio, rng)
    if sources is not None:
        open_ends.append(open_ended_pieces(sources, is_reversed))
    inputs = list(add_noise_mm(streamlines, loader.noise_forward, affine,
                               rng))
    targets = list(add_noise_mm(streamlines, loader.noise_loss, affine, rng))
    np.testing.assert_array_equal(batch.lengths.numpy(),
                                  [len(s) for s in targets])
    assert batch.target_points.dtype == torch.float32
    np.testing.assert_array_equal(batch.target_points.numpy(),
                                  np.concatenate(targets))
    np.testing.assert_array_equal(batch.input_points.numpy(),
                                  np.concatenate(inputs))
    assert (batch.input_points is batch.target_points) == (
        not augmentations.get("noise_gaussian_size_forward")
        and not augmentations.get("noise_gaussian_size_loss"))
    if open_ends:
        np.testing.assert_array_equal(batch.open_ends.numpy(),
                                      np.concatenate(open_ends))
    else:
        assert batch.open_ends is None


def test_noise_is_bounded_by_two_sigma_mm_on_anisotropic_voxels(synthetic):
    clean = _load_all(_loader(synthetic))
    noisy = _load_all(_loader(synthetic, noise_gaussian_size_forward=0.5,
                              noise_gaussian_size_loss=0.3))
    assert torch.equal(noisy.lengths, clean.lengths)
    for points, sigma_mm in ((noisy.input_points, 0.5),
                             (noisy.target_points, 0.3)):
        shift_vox = (points - clean.target_points).numpy().astype(np.float64)
        bound_vox = 2 * sigma_mm / VOXEL_SIZE_MM
        # The noisy point is one float32 rounding of the clean one plus the
        # float32 noise: sigma / voxel size (one rounding) times a value
        # within [-2, 2] (one).
        slack_vox = (rounding_atol(np.abs(points.numpy()).max(), 1)
                     + rounding_atol(bound_vox, 2))
        assert np.all(np.abs(shift_vox) <= bound_vox + slack_vox)
        # Truncated, not clipped, and filling the bound on every axis.
        assert np.all(np.abs(shift_vox).max(axis=0) > 0.9 * bound_vox)
        # Clipping would put ~4.6% of the values at the bound; truncation
        # puts 2.3e-4 within 0.1% of it.
        assert np.mean(np.abs(shift_vox) > 0.999 * bound_vox) < 1e-3
        # Std of N(0, s^2) truncated at 2 s is 0.8796 s, in mm on every
        # axis; 5 standard errors of a sample std (< 1 / sqrt(2 n)
        # relatively, lighter tails than a Gaussian's).
        np.testing.assert_allclose((shift_vox * VOXEL_SIZE_MM).std(axis=0),
                                   0.8796 * sigma_mm,
                                   rtol=5 / np.sqrt(2 * len(shift_vox)))
    assert not torch.equal(noisy.input_points, noisy.target_points)


@pytest.mark.parametrize("neighborhood", [
    dict(), dict(neighborhood_type="axes", neighborhood_radius=1,
                 neighborhood_resolution=1.5),
    dict(neighborhood_type="grid", neighborhood_radius=1,
         neighborhood_resolution=2.)])
def test_inputs_equal_a_direct_interpolation_of_each_subject(synthetic,
                                                             neighborhood):
    loader = _loader(synthetic, **AUGMENTED, **neighborhood)
    (_, ids_0), (_, ids_1) = _all_ids(synthetic, "training")
    # Subject 1 in two runs: one interpolation per run of a subject.
    batch = loader.load_batch(BatchRequest(
        "training", 0, 0, [(1, ids_1[:10]), (0, ids_0), (1, ids_1[10:])]))
    point_subjects = torch.repeat_interleave(batch.subject_indices,
                                             batch.lengths)
    assert set(point_subjects.tolist()) == {0, 1}
    nb_features = synthetic.nb_features[0]
    for subj in (0, 1):
        mri = synthetic.training_set.get_subject(subj).mri_data_list[0]
        points = batch.input_points[point_subjects == subj].double()
        offsets = get_neighborhood_offsets(
            neighborhood.get("neighborhood_type"),
            neighborhood.get("neighborhood_radius"),
            neighborhood.get("neighborhood_resolution"), mri.affine)
        expected = torch.cat([interpolate_volume_at_coordinates(
            mri.data, points + torch.from_numpy(offset)) for offset in offsets],
            dim=1)
        assert expected.shape[1] == nb_features * len(offsets)
        # The loader adds the offsets in float32 (2 roundings of each
        # coordinate, < the largest one); the value moves by at most the
        # largest step between neighbour voxels per voxel of error, on each
        # of 3 axes. Both blend 8 corners with float32 weights.
        data = np.asarray(mri.data, dtype=np.float64)
        max_step = max(np.abs(np.diff(data, axis=axis)).max()
                       for axis in range(3))
        coordinate_atol = rounding_atol(float(points.abs().max()) + 2, 2)
        atol = (3 * max_step * coordinate_atol
                + rounding_atol(np.abs(data).max(), 8))
        torch.testing.assert_close(batch.inputs[point_subjects == subj],
                                   expected, rtol=0, atol=atol)


@pytest.mark.parametrize("lazy", [False, True])
def test_inputs_follow_the_subjects_of_a_reloaded_dataset(tmp_path, lazy):
    # The loader keeps each subject's volume (eager) and neighbourhood
    # offsets; a dataset loaded again with another subject at index 0 (of
    # another voxel size) must be interpolated in that one, with its own
    # offsets, and the old subjects' volumes let go.
    rng = np.random.default_rng(5)
    subjects = {name: make_example_subject(rng, nb_streamlines=6,
                                           voxel_size=size)
                for name, size in (("a", 1.0), ("b", 2.0))}
    path = tmp_path / "two_voxel_sizes.h5"
    write_reference_hdf5(path, subjects, training_subjs=["a", "b"])
    dataset = _load(path, lazy=lazy)
    neighborhood = dict(neighborhood_type="axes", neighborhood_radius=1,
                        neighborhood_resolution=1.5)
    loader = _loader(dataset, **neighborhood)
    request = BatchRequest("training", 0, 0, [(0, np.arange(5))])
    before = loader.load_batch(request)
    old_subset = dataset.training_set
    dataset.load_data(subj_id="b")
    after = loader.load_batch(request)
    assert dataset.training_set.subjects == ["b"]
    offsets = get_neighborhood_offsets(*neighborhood.values(),
                                       subjects["b"]["input"].affine)
    expected = interpolate_with_neighborhood(
        torch.from_numpy(subjects["b"]["input"].data), after.input_points,
        torch.from_numpy(offsets).float())
    np.testing.assert_array_equal(after.inputs.numpy(), expected.numpy())
    assert not torch.equal(before.inputs, after.inputs)
    assert all(cached[0] is not old_subset
               for cached in loader._inputs_cache.values())


def test_inputs_at_voxel_centres_are_the_voxel_values(reference,
                                                      reference_eager):
    # 2 mm voxels and 2 mm layers: the neighbours are the adjacent centres.
    loader = _loader(reference_eager, neighborhood_type="axes",
                     neighborhood_radius=1, neighborhood_resolution=2.)
    batch = loader.load_batch(BatchRequest("validation", 0, 0,
                                           [(0, np.array([0]))]))
    volume = reference[1]["s3"]["input"].data
    steps = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0),
             (0, 0, 1), (0, 0, -1)]
    expected = np.concatenate(
        [volume[tuple((CENTRE_VOXELS + step).T)] for step in steps], axis=1)
    # At voxel centres the weights are 0 and 1: exact, but for the volume's
    # cast to float32.
    np.testing.assert_allclose(batch.inputs.numpy(), expected, rtol=EPS32)


def test_collate_path_and_compute_inputs_path_agree(synthetic):
    kwargs = dict(AUGMENTED, neighborhood_type="axes", neighborhood_radius=1,
                  neighborhood_resolution=2.)
    in_collate = _load_all(_loader(synthetic, **kwargs), batch_index=3)
    deferred_loader = _loader(synthetic, interpolation_device="cpu", **kwargs)
    deferred = _load_all(deferred_loader, batch_index=3)
    assert deferred.inputs is None
    deferred.inputs = deferred_loader.compute_inputs(deferred, "cpu")
    _assert_same_batches([in_collate], [deferred])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compute_inputs_on_gpu_equals_cpu(synthetic):
    kwargs = dict(AUGMENTED, neighborhood_type="grid", neighborhood_radius=1,
                  neighborhood_resolution=2.)
    cpu_batch = _load_all(_loader(synthetic, **kwargs))
    gpu_loader = _loader(synthetic, interpolation_device="cuda", **kwargs)
    gpu_batch = _load_all(gpu_loader).to("cuda")
    inputs = gpu_loader.compute_inputs(gpu_batch, "cuda")
    assert inputs.device.type == "cuda"
    # Each device blends 8 corners in float32 in its own order (within
    # 8 roundings of the exact value): twice that apart.
    atol = 2 * rounding_atol(float(cpu_batch.inputs.abs().max()), 8)
    torch.testing.assert_close(inputs.cpu(), cpu_batch.inputs, rtol=0,
                               atol=atol)


@pytest.mark.parametrize("neighborhood", [
    {}, {"neighborhood_type": "grid", "neighborhood_radius": 1,
         "neighborhood_resolution": 1.}])
def test_eager_and_lazy_datasets_give_the_same_batches(reference_eager,
                                                       reference_lazy,
                                                       neighborhood):
    # Batches of several subjects interpolate their runs at once
    # (interpolate_volumes_at_runs), lazy ones as many subjects at once as
    # the volume cache holds: the same bits as subject by subject.
    kwargs = dict(AUGMENTED, **neighborhood)
    for context in ("training", "validation"):
        _assert_same_batches(
            [_load_all(_loader(reference_eager, **kwargs), context)],
            [_load_all(_loader(reference_lazy, **kwargs), context)])


@pytest.mark.parametrize("cache, expected_groups", [
    (dict(cache_size=None, cache_size_bytes=None), [[0, 1, 2, 3]]),
    (dict(cache_size=2), [[0, 1, 2, 3]]),  # two distinct subjects
    (dict(cache_size=1), [[0], [1], [2], [3]]),
    (dict(cache_size=0), [[0], [1], [2], [3]]),
    # One volume's bytes: the second subject starts a new group.
    (dict(cache_size_bytes=8 * 9 * 10 * 2 * 4), [[0], [1], [2], [3]]),
    (dict(cache_size_bytes=1), [[0], [1], [2], [3]]),
])
def test_lazy_batches_interpolate_as_many_subjects_as_the_cache_holds(
        reference, reference_eager, cache, expected_groups):
    # Runs of subjects 0, 1, 0, 1: a group holds its distinct volumes at
    # once, so at most the cache's bound; the inputs stay those of eager.
    lazy = MultiSubjectDataset(reference[0], lazy=True, **cache)
    lazy.load_data()
    request = BatchRequest("training", 0, 0, [
        (0, np.arange(5)), (1, np.arange(6)), (0, np.arange(5, 9)),
        (1, np.arange(6, 8))])
    lazy_loader = _loader(lazy, **AUGMENTED)
    batch = lazy_loader.load_batch(request)
    runs = subject_runs(batch.subject_indices, batch.lengths,
                        len(batch.input_points))
    groups = lazy_loader._runs_within_volume_cache("training", runs)
    assert [[runs.index(run) for run in group] for group in groups] == (
        expected_groups)
    _assert_same_batches([batch], [_loader(reference_eager, **AUGMENTED)
                                   .load_batch(request)])


def _epoch_batches(dataset, nb_workers=0, epoch=0, sampler_seed=3,
                   loader_seed=4, context="training"):
    sampler = BatchSampler(dataset, "streamlines", 16, 16, "nb_streamlines",
                           seed=sampler_seed)
    sampler.set_epoch(epoch)
    loader = _loader(dataset, seed=loader_seed, **AUGMENTED)
    return list(make_dataloader(sampler, loader, context, nb_workers,
                                generator=torch.Generator()))


def test_two_lazy_workers_give_the_batches_of_the_main_process(
        reference_eager, reference_lazy):
    in_main = _epoch_batches(reference_eager)
    assert len(in_main) == 4  # 60 training streamlines, 16 per batch
    _assert_same_batches(in_main, _epoch_batches(reference_lazy,
                                                 nb_workers=2))


@pytest.mark.parametrize("same_points, with_inputs, open_ends",
                         [(True, True, None), (False, True, [True, False]),
                          (False, False, [False, True])])
def test_a_batch_crosses_processes_as_one_tensor(same_points, with_inputs,
                                                 open_ends):
    generator = torch.Generator().manual_seed(0)
    targets = torch.rand(7, 3, generator=generator)
    batch = LoadedBatch(
        targets, targets if same_points else torch.rand(7, 3,
                                                        generator=generator),
        torch.tensor([3, 4]), torch.tensor([0, 1]), "training",
        torch.rand(7, 5, generator=generator) if with_inputs else None,
        None if open_ends is None else torch.tensor(open_ends))
    _, arguments = batch.__reduce__()
    assert sum(isinstance(a, torch.Tensor) for a in arguments) == 1
    copy = pickle.loads(pickle.dumps(batch))
    _assert_same_batches([batch], [copy])
    assert (copy.input_points is copy.target_points) == same_points
    assert (copy.inputs is None) == (not with_inputs)
    assert copy.split == "training"


def test_two_workers_draw_distinct_augmentations(reference_eager):
    loader = _loader(reference_eager, **AUGMENTED)
    ids = _all_ids(reference_eager, "training")
    requests = [BatchRequest("training", 0, index, ids) for index in (0, 1)]
    batches = list(DataLoader(requests, batch_size=None, num_workers=2,
                              collate_fn=loader.load_batch))
    assert _differ(batches[0].input_points, batches[1].input_points)
    # Each is what the main process loads for the same request.
    _assert_same_batches(batches, [loader.load_batch(r) for r in requests])


def test_distributed_ranks_draw_distinct_augmentations(reference_eager):
    loader = _loader(reference_eager, **AUGMENTED)
    sampler = BatchSampler(reference_eager, "streamlines", 16, 16,
                           "nb_streamlines", seed=3, rank=1, world_size=2)
    first = next(iter(make_dataloader(sampler, loader, "training")))
    ids = sampler.rank_plan("training")[0]
    # The request carried rank 1: rank 0 would draw other augmentations.
    _assert_same_batches([first], [loader.load_batch(
        BatchRequest("training", 0, 0, ids, rank=1))])
    assert _differ(first.input_points, loader.load_batch(
        BatchRequest("training", 0, 0, ids, rank=0)).input_points)


def test_epochs_differ_and_seeds_reproduce(reference_eager):
    epoch_0 = _epoch_batches(reference_eager)
    _assert_same_batches(epoch_0, _epoch_batches(reference_eager))
    epoch_1 = _epoch_batches(reference_eager, epoch=1)
    assert _differ(epoch_0[0].target_points, epoch_1[0].target_points)
    # The same streamlines in another epoch get other augmentations.
    loader = _loader(reference_eager, **AUGMENTED)
    assert _differ(_load_all(loader, epoch=0).input_points,
                   _load_all(loader, epoch=1).input_points)
    # Another loader seed: the same streamlines, other augmentations.
    other_seed = _epoch_batches(reference_eager, loader_seed=5)
    assert len(other_seed) == len(epoch_0)
    assert _differ(other_seed[0].input_points, epoch_0[0].input_points)


def test_resumed_sampler_and_loader_reproduce_the_batches(reference_eager,
                                                          tmp_path):
    uninterrupted = _epoch_batches(reference_eager)

    def make(sampler_seed, loader_seed):
        return (BatchSampler(reference_eager, "streamlines", 16, 16,
                             "nb_streamlines", seed=sampler_seed),
                _loader(reference_eager, seed=loader_seed, **AUGMENTED))

    sampler, loader = make(sampler_seed=3, loader_seed=4)
    iterator = iter(make_dataloader(sampler, loader, "training"))
    first = [next(iterator), next(iterator)]
    path = tmp_path / "state.pt"
    torch.save({"sampler": sampler.state_dict(),
                "loader": loader.state_dict()}, path)
    del iterator

    state = torch.load(path, weights_only=True)
    sampler, loader = make(sampler_seed=99, loader_seed=99)
    sampler.load_state_dict(state["sampler"])
    loader.load_state_dict(state["loader"])
    rest = list(make_dataloader(sampler, loader, "training"))
    _assert_same_batches(first + rest, uninterrupted)


def test_params_for_checkpoint_rebuild_the_same_loader(reference_eager):
    loader = _loader(reference_eager, step_size=0.8, seed=11, **AUGMENTED)
    params = loader.params_for_checkpoint
    buffer = io.BytesIO()
    torch.save(params, buffer)
    buffer.seek(0)
    rebuilt = BatchLoaderOneInput(reference_eager, input_spec=loader.input_spec,
                                  **torch.load(buffer, weights_only=True))
    _assert_same_batches([_load_all(loader)], [_load_all(rebuilt)])


def test_model_step_size_resamples_validation_too(reference, reference_eager):
    assert reference_eager.step_size is None
    batch = _load_all(_loader(reference_eager, step_size=0.8), "validation")
    subject = reference[1]["s3"]["streamlines"]
    originals = subject.streamlines
    lengths = np.array([len(s) for s in originals])
    expected = resample_to_step_size(
        make_array_sequence(np.concatenate(originals),
                            np.cumsum(lengths) - lengths, lengths),
        np.asarray(subject.affine, dtype=np.float64), 0.8)
    np.testing.assert_array_equal(batch.lengths.numpy(), expected._lengths)
    # float32 resampling: each new point is a blend of two (a few
    # roundings, ~4 each way through mm), in coordinates < the largest.
    np.testing.assert_allclose(
        batch.target_points.numpy(), expected._data, rtol=0,
        atol=rounding_atol(np.abs(expected._data).max(), 8))
    # 2 mm voxels: ceil(L / 0.8) equally spaced points, so steps of about
    # 0.8 mm = 0.4 voxel (longer by at most a factor (n - 1) / (n - 2)).
    steps = np.linalg.norm(np.diff(batch.target_points.numpy(), axis=0), axis=1)
    inner = np.ones(len(steps), dtype=bool)
    inner[np.cumsum(batch.lengths.numpy())[:-1] - 1] = False
    # Each float32 point rounds once, in coordinates < the largest.
    slack_vox = rounding_atol(np.abs(batch.target_points.numpy()).max(), 2)
    assert np.all(steps[inner] <= 0.4 * 2 + slack_vox)
    assert np.median(steps[inner]) < 0.5


def test_streamlines_stored_at_the_model_step_reach_it_unchanged(tmp_path):
    """Idempotence: resampled at creation with the model's step, a streamline
    keeps exactly its stored points at load time."""
    paths = make_synthetic_dataset(str(tmp_path / "data"), nb_subjects=3,
                                   nb_streamlines=10, shape=(12, 12, 10),
                                   seed=2)
    hdf5 = tmp_path / "step.h5"
    create_hdf5_dataset(paths.out_folder + "/dwi_ml_ready", str(hdf5),
                        paths.config, *(paths.splits[split] for split in
                                        ("training", "validation", "testing")),
                        step_size=0.5)
    dataset = _load(hdf5, lazy=False)
    stored = dataset.validation_set.get_subject(0).sft_data_list[0]
    batch = _load_all(_loader(dataset, step_size=0.5), "validation")
    expected = stored.get_streamlines(np.arange(stored.nb_streamlines))
    np.testing.assert_array_equal(batch.lengths.numpy(), expected._lengths)
    np.testing.assert_array_equal(batch.target_points.numpy(),
                                  expected.get_data())
