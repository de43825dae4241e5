"""MultiSubjectDataset, eager and lazy, on files in the reference layout."""
import gc
import os
import pickle

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from dipy.io.stateful_tractogram import Origin, Space
from reference_hdf5 import (
    lengths_mm,
    make_example_subject,
    write_reference_hdf5,
)

from dwi_ml.data.dataset import (
    LazyMRIData,
    LazySFTData,
    MRIData,
    MultiSubjectDataset,
    SFTData,
)
from dwi_ml.data.dataset import subjects as subjects_module
from dwi_ml.data.dataset.hdf5_handle import MAX_OPEN_DATASETS, Hdf5Handle
from dwi_ml.data.dataset.row_ranges import (
    find_raw_chunks,
    plan_blocks,
    read_row_ranges,
)
from dwi_ml.data.hdf5.layout import (
    CHECKSUM_SUFFIX,
    ROWS_PER_CHECKSUM_ATTR,
    row_block_checksums,
)
from dwi_ml.io_utils.errors import DwiMLUserError, one_line_message
from tests.tolerances import rounding_atol

SPLITS = {"training_subjs": ["subj_b", "subj_a"],
          "validation_subjs": ["subj_c"], "testing_subjs": []}


def _quirky_subjects():
    """Three subjects, each with some of the reference's quirks."""
    rng = np.random.default_rng(42)
    subjects = {
        "subj_a": make_example_subject(rng, gap_rows=3, shuffle_storage=True,
                                       write_euclidean_lengths=False),
        "subj_b": make_example_subject(rng, nb_streamlines=15,
                                       data_per_streamline=None),
        "subj_c": make_example_subject(rng, nb_streamlines=25, gap_rows=1),
    }
    # Space attributes with other dtypes, as from another source file.
    streamlines_b = subjects["subj_b"]["streamlines"]
    streamlines_b.affine = streamlines_b.affine.astype(np.float64)
    streamlines_b.dimensions = streamlines_b.dimensions.astype(np.float64)
    streamlines_b.voxel_sizes = streamlines_b.voxel_sizes.astype(np.float64)
    streamlines_b.voxel_order = np.bytes_(b"RAS")
    return subjects


@pytest.fixture(params=["dict_repr_str_attrs", "json_bytes_attrs"])
def quirky_file(request, tmp_path):
    subjects = _quirky_subjects()
    path = str(tmp_path / "reference.hdf5")
    as_json = request.param == "json_bytes_attrs"
    write_reference_hdf5(path, subjects, step_size=0.5, compress=None,
                         config_as_json=as_json, bytes_attrs=as_json,
                         **SPLITS)
    return path, subjects


def _load(path, lazy, **kwargs):
    dataset = MultiSubjectDataset(path, lazy=lazy, **kwargs)
    dataset.load_data()
    return dataset


def _assert_lengths_mm_close(got, streamlines, affine):
    """``got`` float32 lengths equal the reference's up to rounding.

    Each step is a difference of float32 points (a rounding at the size of
    the coordinates, < max |x| mm), then its norm, the sum over the steps
    and the float32 store round relatively (< 12 roundings of the length).
    """
    expected = lengths_mm(streamlines, affine)
    magnitude_mm = np.abs(np.concatenate(streamlines)).max() \
        * np.abs(affine[:3, :3]).sum(axis=1).max()
    nb_steps = np.array([len(s) - 1 for s in streamlines])
    bound = (nb_steps * rounding_atol(magnitude_mm, 2)
             + rounding_atol(expected, 12))
    assert np.all(np.abs(got - expected) <= bound)


def _assert_same_streamlines(sequence, expected_list):
    assert len(sequence) == len(expected_list)
    assert sequence._data.dtype == np.float32
    assert np.array_equal(sequence._offsets,
                          np.cumsum(sequence._lengths) - sequence._lengths)
    for got, expected in zip(sequence, expected_list):
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("lazy", [False, True])
def test_gives_back_what_was_written(quirky_file, lazy):
    path, subjects = quirky_file
    dataset = _load(path, lazy)
    assert dataset.volume_groups == ["input"]
    assert dataset.nb_features == [2]
    assert dataset.streamline_groups == ["streamlines"]
    assert (dataset.step_size, dataset.nb_points, dataset.compress) == (
        0.5, None, None)
    assert dataset.groups_config["input"]["type"] == "volume"
    assert dataset.training_set.subjects == ["subj_a", "subj_b"]
    assert dataset.validation_set.subjects == ["subj_c"]
    assert dataset.testing_set.nb_subjects == 0
    rng = np.random.default_rng(0)
    for subset in (dataset.training_set, dataset.validation_set):
        for subj_idx, subject_id in enumerate(subset.subjects):
            written = subjects[subject_id]
            subject = subset.get_subject(subj_idx)
            mri = subject.mri_data_list[0]
            assert isinstance(mri, LazyMRIData if lazy else MRIData)
            tensor = mri.as_tensor("cpu")
            assert tensor.dtype == torch.float32
            assert np.array_equal(tensor.numpy(), written["input"].data)
            assert np.array_equal(mri.affine, written["input"].affine)
            assert np.all(mri.voxres == 2.)   # exact in float32

            sft_data = subject.sft_data_list[0]
            assert isinstance(sft_data, LazySFTData if lazy else SFTData)
            streamlines = written["streamlines"].streamlines
            ids = rng.integers(0, len(streamlines), size=30)  # repeats
            _assert_same_streamlines(sft_data.get_streamlines(ids),
                                     [streamlines[i] for i in ids])
            _assert_same_streamlines(sft_data.get_streamlines(), streamlines)
            assert np.array_equal(subset.get_lengths(subj_idx, 0),
                                  [len(s) for s in streamlines])
            assert subset.get_lengths_mm(subj_idx, 0).dtype == np.float32
            _assert_lengths_mm_close(subset.get_lengths_mm(subj_idx, 0),
                                     streamlines,
                                     written["streamlines"].affine)
            dps = written["streamlines"].data_per_streamline or {}
            got_dps = sft_data.get_data_per_streamline(ids)
            assert sorted(got_dps) == sorted(dps)
            for key, values in dps.items():
                assert np.array_equal(got_dps[key], values[ids])


def test_eager_equals_lazy(quirky_file):
    eager, lazy = _load(quirky_file[0], False), _load(quirky_file[0], True)
    for eager_set, lazy_set in ((eager.training_set, lazy.training_set),
                                (eager.validation_set, lazy.validation_set)):
        for subj_idx in range(eager_set.nb_subjects):
            eager_subject = eager_set.get_subject(subj_idx)
            lazy_subject = lazy_set.get_subject(subj_idx)
            assert torch.equal(eager_subject.mri_data_list[0].as_tensor(),
                               lazy_subject.mri_data_list[0].as_tensor())
            eager_sft = eager_subject.sft_data_list[0]
            lazy_sft = lazy_subject.sft_data_list[0]
            ids = np.arange(eager_sft.nb_streamlines)[::-1]
            eager_seq = eager_sft.get_streamlines(ids)
            lazy_seq = lazy_sft.get_streamlines(ids)
            assert np.array_equal(eager_seq._data, lazy_seq._data)
            assert np.array_equal(eager_seq._lengths, lazy_seq._lengths)
            assert np.array_equal(eager_sft.lengths_mm, lazy_sft.lengths_mm)
            for i, j in zip(eager_sft.space_attributes,
                            lazy_sft.space_attributes):
                assert np.array_equal(i, j)


def test_eager_equals_lazy_lengths_mm_of_float64_points(tmp_path):
    # Before: without euclidean_lengths, the lazy dataset measured float64
    # points as stored and the eager one their float32 cast (what batches
    # hold): lengths differed by ~1e-6 mm, and so could the batches of a
    # length_mm sampler.
    rng = np.random.default_rng(3)
    subjects = {"s1": make_example_subject(rng, nb_streamlines=40,
                                           write_euclidean_lengths=False)}
    path = _write(tmp_path, subjects, training_subjs=["s1"])
    with h5py.File(path, "a") as hdf:
        points = hdf["s1/streamlines/data"][()].astype(np.float64)
        points += rng.uniform(-1e-4, 1e-4, points.shape)
        del hdf["s1/streamlines/data"]
        hdf["s1/streamlines"].create_dataset("data", data=points)
    eager, lazy = _load(path, False), _load(path, True)
    eager_sft = eager.training_set.get_subject(0).sft_data_list[0]
    lazy_sft = lazy.training_set.get_subject(0).sft_data_list[0]
    assert np.array_equal(eager_sft.lengths_mm, lazy_sft.lengths_mm)
    assert np.array_equal(eager_sft.get_streamlines()._data,
                          lazy_sft.get_streamlines()._data)


@pytest.mark.parametrize("lazy", [False, True])
def test_as_sft_maps_to_rasmm_with_the_affine(quirky_file, lazy):
    path, subjects = quirky_file
    subject = _load(path, lazy).validation_set.get_subject(0)
    written = subjects["subj_c"]["streamlines"]
    ids = [4, 0, 7]
    sft = subject.sft_data_list[0].as_sft(ids)
    assert (sft.space, sft.origin) == (Space.VOX, Origin.TRACKVIS)
    assert np.array_equal(sft.data_per_streamline["seed_id"],
                          written.data_per_streamline["seed_id"][ids])
    sft.to_rasmm()
    sft.to_center()
    for got, i in zip(sft.streamlines, ids):
        expected = nib.affines.apply_affine(written.affine,
                                            written.streamlines[i] - 0.5)
        # dipy's float32 shift and affine map: ~5 roundings, in values
        # below |A| |x| + |t| mm.
        magnitude_mm = (np.abs(written.affine[:3, :3]).sum(axis=1).max()
                        * np.abs(written.streamlines[i]).max()
                        + np.abs(written.affine[:3, 3]).max())
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=rounding_atol(magnitude_mm, 8))


def _arrays_held(obj):
    return [value for value in vars(obj).values()
            if isinstance(value, np.ndarray)]


def test_lazy_lengths_live_in_ram_without_points(quirky_file, monkeypatch):
    # Small blocks: the missing euclidean lengths of subj_a are computed
    # from disk over several blocks.
    monkeypatch.setattr(subjects_module, "LENGTHS_BLOCK_POINTS", 7)
    path, subjects = quirky_file
    dataset = _load(path, lazy=True)
    dataset.close()
    for subj_idx, subject_id in enumerate(dataset.training_set.subjects):
        written = subjects[subject_id]["streamlines"]
        sft_data = dataset.training_set.get_subject(subj_idx).sft_data_list[0]
        nb_points = sum(len(s) for s in written.streamlines)
        # Only per-streamline arrays (N,), never the (P, 3) points.
        for array in _arrays_held(sft_data):
            assert array.shape == (sft_data.nb_streamlines,)
            assert array.size < nb_points
        _assert_lengths_mm_close(
            dataset.training_set.get_lengths_mm(subj_idx, 0),
            written.streamlines, written.affine)
    # The handle reopens on the next read.
    _assert_same_streamlines(
        dataset.training_set.get_subject(0).sft_data_list[0]
        .get_streamlines([1]), [subjects["subj_a"]["streamlines"]
                                .streamlines[1]])


def test_lru_cache_is_bounded(quirky_file):
    path, _ = quirky_file
    dataset = _load(path, lazy=True, cache_size=1)
    subjects = [dataset.training_set.get_subject(0),
                dataset.training_set.get_subject(1),
                dataset.validation_set.get_subject(0)]
    tensors = [subject.mri_data_list[0].as_tensor() for subject in subjects]
    assert len(dataset.volume_cache) == 1
    assert subjects[2].mri_data_list[0].as_tensor() is tensors[2]
    assert subjects[0].mri_data_list[0].as_tensor() is not tensors[0]

    volume_bytes = tensors[0].element_size() * tensors[0].nelement()
    dataset = _load(path, lazy=True, cache_size_bytes=2 * volume_bytes)
    for subset in (dataset.training_set, dataset.validation_set):
        for subj_idx in range(subset.nb_subjects):
            subset.get_subject(subj_idx).mri_data_list[0].as_tensor()
    assert len(dataset.volume_cache) == 2
    assert dataset.volume_cache.nbytes == 2 * volume_bytes


def test_eager_keeps_one_tensor_per_device(quirky_file):
    mri = _load(quirky_file[0], False).training_set.get_subject(0) \
        .mri_data_list[0]
    assert mri.as_tensor("cpu") is mri.as_tensor(torch.device("cpu"))
    assert mri.as_tensor().shape == mri.shape == (8, 9, 10, 2)


class _StreamlineBatches(torch.utils.data.Dataset):
    """Batch k: the streamlines ``ids[k]`` of one lazy subject."""

    def __init__(self, sft_data, batches):
        self.sft_data = sft_data
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        sequence = self.sft_data.get_streamlines(self.batches[k])
        return os.getpid(), sequence._data, sequence._lengths


def test_dataloader_workers_read_the_same_streamlines(quirky_file):
    dataset = _load(quirky_file[0], lazy=True)
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    sft_data.get_streamlines([0])  # the parent's handle is now open
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, sft_data.nb_streamlines, 12) for _ in range(6)]
    loader = torch.utils.data.DataLoader(
        _StreamlineBatches(sft_data, batches), batch_size=None,
        num_workers=2, multiprocessing_context="fork")
    worker_pids = set()
    for k, (pid, data, lengths) in enumerate(loader):
        expected = sft_data.get_streamlines(batches[k])
        worker_pids.add(int(pid))
        assert np.array_equal(data.numpy(), expected._data)
        assert np.array_equal(lengths.numpy(), expected._lengths)
    assert os.getpid() not in worker_pids and len(worker_pids) == 2


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_file_recreated_under_a_lazy_dataset_is_refused_by_workers(
        tmp_path, context):
    # Workers open the file by its path: one re-created (same path, other
    # streamlines) after the dataset was loaded was read with the old
    # offsets and lengths, silently giving other points.
    path = _write(tmp_path)
    dataset = _load(path, lazy=True)
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    sft_data.get_streamlines([0])
    rng = np.random.default_rng(11)
    subjects = {name: make_example_subject(rng, nb_streamlines=30)
                for name in ("subj_a", "subj_b", "subj_c")}
    write_reference_hdf5(path + ".new", subjects, **SPLITS)
    os.replace(path + ".new", path)
    assert len(sft_data.get_streamlines([0, 1])) == 2  # the open old file
    loader = torch.utils.data.DataLoader(
        _StreamlineBatches(sft_data, [[0, 1]]), batch_size=None,
        num_workers=1, multiprocessing_context=context)
    message = _first_batch_error(loader)
    assert message == (
        f"HDF5 file '{path}': it changed since the dataset was loaded "
        "(re-created or modified); a lazy dataset reads it until the end of "
        "the run: restart the run, or resume it from its checkpoint.")


def test_the_raw_descriptor_reads_the_file_that_h5py_opened(tmp_path):
    """Lazy reads of unfiltered data go through a raw descriptor: it is
    h5py's own file, not the path opened again (which may be a new file by
    then)."""
    dataset = _load(_write(tmp_path), lazy=True)
    handle = dataset._handle
    h5py_file = os.fstat(handle.file.id.get_vfd_handle())
    raw = os.fstat(handle.fd)
    assert (raw.st_dev, raw.st_ino) == (h5py_file.st_dev, h5py_file.st_ino)
    assert handle.fd != handle.file.id.get_vfd_handle()  # closed separately


def _first_batch_error(loader):
    """The one-line message of the user error of the loader's first batch.

    The iterator is released here: an exception kept by pytest would hold
    it, through its traceback, and keep its worker alive for later tests.
    """
    iterator = iter(loader)
    try:
        next(iterator)
    except DwiMLUserError as error:
        return one_line_message(error)
    finally:
        # The worker's traceback makes a reference cycle with the iterator.
        del iterator
        gc.collect()
    pytest.fail("expected a DwiMLUserError from the first batch")


def test_pickled_lazy_dataset_reads_with_its_own_handle(quirky_file):
    dataset = _load(quirky_file[0], lazy=True)
    subject = dataset.validation_set.get_subject(0)
    subject.mri_data_list[0].as_tensor()
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy.volume_cache) == 0
    copy_subject = copy.validation_set.get_subject(0)
    assert copy_subject.sft_data_list[0]._handle is copy._handle
    assert copy._handle is not dataset._handle
    ids = [3, 1, 3]
    assert np.array_equal(
        copy_subject.sft_data_list[0].get_streamlines(ids)._data,
        subject.sft_data_list[0].get_streamlines(ids)._data)
    assert torch.equal(copy_subject.mri_data_list[0].as_tensor(),
                       subject.mri_data_list[0].as_tensor())


def test_load_subsets_subjects_and_groups(quirky_file):
    path, _ = quirky_file
    dataset = MultiSubjectDataset(path)
    dataset.load_data(load_validation=False, subj_id="subj_b",
                      volume_groups=[], streamline_groups=["streamlines"])
    assert dataset.training_set.subjects == ["subj_b"]
    assert dataset.validation_set.nb_subjects == 0
    assert dataset.volume_groups == [] and dataset.nb_features == []
    assert dataset.training_set.get_subject(0).mri_data_list == []


def test_one_group_name_is_one_group_and_subjects_are_found_by_id(
        quirky_file):
    """A string was split into letters ("no volume group 'i'")."""
    dataset = MultiSubjectDataset(quirky_file[0])
    dataset.load_data(volume_groups="input", streamline_groups="streamlines")
    assert dataset.volume_groups == ["input"]
    assert dataset.streamline_groups == ["streamlines"]
    subset = dataset.training_set
    assert subset.get_subject("subj_b") is subset.get_subject(1)
    assert np.array_equal(subset.get_lengths("subj_b", 0),
                          subset.get_lengths(1, 0))


@pytest.mark.parametrize("call, message", [
    (lambda d: MultiSubjectDataset(d.hdf5_file, lazy="no"),
     "argument lazy: expected True or False, got 'no'"),
    (lambda d: MultiSubjectDataset(d.hdf5_file, cache_size=-1),
     "argument cache_size: expected an integer >= 0, got -1"),
    (lambda d: MultiSubjectDataset(d.hdf5_file, cache_size="big"),
     "argument cache_size: expected an integer >= 0, got 'big'"),
    (lambda d: d.load_data(load_training="no"),
     "load_data argument load_training: expected True or False"),
    (lambda d: d.load_data(volume_groups=["input", "input"]),
     "volume_groups: expected each group once, found 'input' 2 times."),
    (lambda d: d.training_set.get_subject("subj_x"),
     "training subjects: no subject 'subj_x'; loaded: subj_a, subj_b."),
    # -1 gave the last subject; 5 an IndexError.
    (lambda d: d.training_set.get_subject(-1),
     "training subjects: expected a subject index in [0, 2) or a subject id, "
     "got -1."),
    (lambda d: d.training_set.get_lengths(0, 3),
     "expected a streamline group index in [0, 1), got 3."),
    (lambda d: d.check_same_grid("dwi", "streamlines"),
     "argument volume_group: expected one of ['input'], got 'dwi'."),
    (lambda d: d.voxel_orientations("dwi"),
     "argument volume_group: expected one of ['input'], got 'dwi'."),
])
def test_dataset_arguments_are_named(quirky_file, call, message):
    dataset = _load(quirky_file[0], lazy=False)
    with pytest.raises(DwiMLUserError) as refused:
        call(dataset)
    assert message in str(refused.value)


def test_fractional_streamline_ids_are_refused(quirky_file):
    """get_streamlines([1.7]) returned streamline 1."""
    sft_data = _load(quirky_file[0], lazy=False).training_set \
        .get_subject(0).sft_data_list[0]
    with pytest.raises(IndexError, match="must be integers; got float64"):
        sft_data.get_streamlines([1.7])
    assert len(sft_data.get_streamlines([])) == 0


@pytest.mark.parametrize("lazy", [False, True])
def test_3d_volume_counts_as_one_feature(tmp_path, lazy):
    subjects = {"s1": make_example_subject(np.random.default_rng(2))}
    volume = subjects["s1"]["input"]
    volume.data = volume.data[..., 0]
    dataset = _load(_write(tmp_path, subjects, testing_subjs=["s1"]), lazy)
    assert dataset.nb_features == [1]
    tensor = dataset.testing_set.get_subject(0).mri_data_list[0].as_tensor()
    assert np.array_equal(tensor.numpy(), volume.data[..., None])


@pytest.mark.parametrize("chunks, compression, read_raw", [
    (None, None, True), ((7, 3), None, True), ((7, 3), "gzip", False)])
def test_coalesced_reads_match_slicing(tmp_path, chunks, compression,
                                       read_raw):
    rng = np.random.default_rng(1)
    data = rng.random((20_000, 3), dtype=np.float32)
    path = str(tmp_path / "rows.hdf5")
    with h5py.File(path, "w") as hdf:
        hdf.create_dataset("data", data=data, chunks=chunks,
                           compression=compression)
    handle = Hdf5Handle(path)
    assert (find_raw_chunks(handle.dataset("data")) is not None) == read_raw
    # Ranges over chunk ends, some overlapping, some far apart.
    starts = np.concatenate([rng.integers(0, 400, 30),
                             rng.integers(0, 19_980, 30)])
    counts = rng.integers(0, 20, 60)
    buffer, positions = read_row_ranges(handle, "data", starts, counts)
    for start, count, position in zip(starts, counts, positions):
        assert np.array_equal(buffer[position:position + count],
                              data[start:start + count])
    # Near ranges share a block, far ones do not: not one big read.
    assert len(buffer) < (starts + counts).max() - starts.min()

    block_starts, block_counts, positions = plan_blocks(starts, counts, 5)
    gaps = block_starts[1:] - (block_starts[:-1] + block_counts[:-1])
    assert len(block_starts) > 1 and np.all(gaps > 5)
    buffer = np.concatenate([data[start:start + count] for start, count
                             in zip(block_starts, block_counts)])
    for start, count, position in zip(starts, counts, positions):
        assert np.array_equal(buffer[position:position + count],
                              data[start:start + count])


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_open_datasets_stay_bounded_over_many_subjects(tmp_path,
                                                       compression):
    # Each open dataset keeps its own chunk cache (and HDF5's slot table):
    # a lazy run kept every subject's open, 2.4 MB each, never released.
    rng = np.random.default_rng(2)
    path = str(tmp_path / "many.hdf5")
    arrays = {f"subj{i}/data": rng.random((300, 3), dtype=np.float32)
              for i in range(3 * MAX_OPEN_DATASETS)}
    with h5py.File(path, "w") as hdf:
        for key, data in arrays.items():
            hdf.create_dataset(key, data=data, chunks=(64, 3),
                               compression=compression)
    handle = Hdf5Handle(path)
    for _ in range(2):  # the second pass reopens what was closed
        for key, data in arrays.items():
            buffer, positions = read_row_ranges(handle, key,
                                                np.array([5, 200]),
                                                np.array([10, 70]))
            assert np.array_equal(buffer[positions[0]:positions[0] + 10],
                                  data[5:15])
            assert np.array_equal(buffer[positions[1]:positions[1] + 70],
                                  data[200:270])
    gc.collect()
    assert h5py.h5f.get_obj_count(handle.file.id, h5py.h5f.OBJ_DATASET) <= \
        MAX_OPEN_DATASETS


def _descriptors_of(path):
    folder = "/proc/self/fd"
    found = []
    for name in os.listdir(folder):
        try:
            if os.path.realpath(os.readlink(os.path.join(folder, name))) \
                    == os.path.realpath(path):
                found.append(name)
        except OSError:  # closed meanwhile (listdir's own descriptor)
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux")
def test_a_dropped_lazy_dataset_closes_the_file(quirky_file):
    # The raw descriptor stayed open: the file stayed open, and locked
    # against writers, after a lazy run from Python returned.
    path, subjects = quirky_file
    dataset = _load(path, lazy=True)
    subject = dataset.training_set.get_subject(0)
    assert len(subject.sft_data_list[0].get_streamlines([0])) == 1
    assert _descriptors_of(path)
    del dataset, subject
    gc.collect()
    assert _descriptors_of(path) == []
    with h5py.File(path, "r+"):
        pass


def test_reads_across_chunks_scattered_in_the_file(tmp_path):
    # Chunks written last to first lie in the file in reverse order: every
    # chunk end is the end of a stretch of bytes, and blocks over it are read
    # in pieces, still one after the other in the buffer.
    rng = np.random.default_rng(2)
    data = rng.random((3_000, 3), dtype=np.float32)
    path = str(tmp_path / "scattered.hdf5")
    with h5py.File(path, "w") as hdf:
        dataset = hdf.create_dataset("data", shape=data.shape,
                                     dtype=data.dtype, chunks=(7, 3))
        for first_row in range(len(data) // 7 * 7, -1, -7):
            dataset[first_row:first_row + 7] = data[first_row:first_row + 7]
    handle = Hdf5Handle(path)
    chunk_rows, addresses = find_raw_chunks(handle.dataset("data"))
    assert chunk_rows == 7 and np.all(np.diff(addresses) < 0)
    # Ranges over 0 to 5 chunk ends, overlapping, repeated, empty, merged by
    # the gap or not.
    starts = np.concatenate([rng.integers(0, 2_960, 200), [5, 5, 13, 700]])
    counts = np.concatenate([rng.integers(0, 40, 200), [3, 3, 0, 30]])
    buffer, positions = read_row_ranges(handle, "data", starts, counts)
    for start, count, position in zip(starts, counts, positions):
        assert np.array_equal(buffer[position:position + count],
                              data[start:start + count])


@pytest.mark.parametrize("damaged", [False, True])
def test_checksums_of_blocks_across_scattered_chunks(tmp_path, damaged):
    # Checksum blocks of 10 rows over chunks of 7 written last to first:
    # most blocks lie in two or three stretches of the file, each checked
    # once, the first time a read touches it; a changed byte is named.
    key = "subj/streamlines/data"  # subject/group/data, as in the files
    rng = np.random.default_rng(3)
    data = rng.random((700, 3), dtype=np.float32)
    path = str(tmp_path / "checked.hdf5")
    with h5py.File(path, "w") as hdf:
        dataset = hdf.create_dataset(key, shape=data.shape,
                                     dtype=data.dtype, chunks=(7, 3))
        for first_row in range(len(data) // 7 * 7, -1, -7):
            dataset[first_row:first_row + 7] = data[first_row:first_row + 7]
        checksums = hdf.create_dataset(
            key + CHECKSUM_SUFFIX, data=row_block_checksums(data, 10))
        checksums.attrs[ROWS_PER_CHECKSUM_ATTR] = 10
        chunk_address = dataset.id.get_chunk_info_by_coord((350, 0)).byte_offset
    if damaged:  # row 352 (block 35, rows 350 to 359)
        with open(path, "r+b") as file:
            file.seek(chunk_address + 2 * 12)
            file.write(np.float32(7.).tobytes())
    handle = Hdf5Handle(path)
    starts = np.array([0, 345, 600, 5])
    counts = np.array([30, 20, 100, 3])
    if damaged:
        with pytest.raises(DwiMLUserError, match="rows 350 to 359 of dataset"):
            read_row_ranges(handle, key, starts, counts)
        return
    for _ in range(2):  # checked, then read only
        buffer, positions = read_row_ranges(handle, key, starts, counts)
        for start, count, position in zip(starts, counts, positions):
            assert np.array_equal(buffer[position:position + count],
                                  data[start:start + count])


# ---------------------------------------------------------------- errors --

def _raises(match, path, **load_kwargs):
    with pytest.raises(DwiMLUserError, match=match) as error:
        MultiSubjectDataset(path).load_data(**load_kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def _write(tmp_path, subjects=None, **kwargs):
    path = str(tmp_path / "file.hdf5")
    write_reference_hdf5(path, subjects or _quirky_subjects(),
                         **(kwargs or SPLITS))
    return path


def test_error_file_missing_or_not_hdf5_or_not_the_layout(tmp_path):
    _raises("not found", str(tmp_path / "nope.hdf5"))
    # It said 'not found' of a path that exists.
    assert _raises("not a regular file", "/dev/null") == (
        "HDF5 file '/dev/null' is not a regular file (a device, pipe or "
        "socket).")
    text_file = tmp_path / "notes.hdf5"
    text_file.write_text("hello")
    _raises("not a dwi_ml HDF5 file: it is not an HDF5 file", str(text_file))
    with h5py.File(tmp_path / "other.hdf5", "w") as hdf:
        hdf.attrs["foo"] = 1
    _raises("not a dwi_ml HDF5 file: .*lacks the dwi_ml layout.*found "
            "attrs \\[foo\\]",
            str(tmp_path / "other.hdf5"))


def test_error_unknown_subject_and_groups(tmp_path):
    path = _write(tmp_path)
    _raises("unknown subject id 'subj_z'.*subj_a, subj_b, subj_c", path,
            subj_id="subj_z")
    _raises("no volume group 'T1'.*available volume groups: input", path,
            volume_groups=["T1"])
    _raises("no streamlines group 'input'.*available streamlines groups: "
            "streamlines", path, streamline_groups=["input"])


def test_error_listed_subject_without_group(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "a") as hdf:
        del hdf["subj_c"]
    _raises("subject 'subj_c' is listed", path)


def test_error_subjects_differ(tmp_path):
    rng = np.random.default_rng(5)
    subjects = {"s1": make_example_subject(rng),
                "s2": make_example_subject(rng, nb_features=3)}
    path = _write(tmp_path, subjects, training_subjs=["s1", "s2"])
    message = _raises("subject 's2', group 'input': expected 2 features as "
                      "in subject 's1', found 3", path)
    assert "HDF5 file" in message

    subjects["s2"] = make_example_subject(rng)
    subjects["s2"]["bundle"] = subjects["s2"].pop("streamlines")
    path = _write(tmp_path, subjects, training_subjs=["s1", "s2"])
    _raises("subject 's2': expected a streamlines group 'streamlines' as in "
            "subject 's1', found only groups \\[bundle, input\\]", path)

    with h5py.File(path, "a") as hdf:
        hdf["s2"].move("bundle", "streamlines")
        hdf["s2/input"].attrs["type"] = "streamlines"
    _raises("group 'input': expected type 'volume' as in subject 's1', "
            "found 'streamlines'", path)


def test_error_streamlines_outside_data(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "a") as hdf:
        offsets = hdf["subj_a/streamlines/offsets"]
        offsets[0] = len(hdf["subj_a/streamlines/data"])
    _raises("'subj_a/streamlines': expected offsets \\+ lengths within", path)


@pytest.mark.parametrize("lazy", [False, True])
def test_non_finite_volume_values_are_named(tmp_path, lazy):
    # Our HDF5 creation refuses NaN, the reference's does not: its NaN
    # reached the inputs, and training stopped with "non-finite loss (nan)
    # ... Try a lower learning rate or --clip_grad".
    path = _write(tmp_path)
    with h5py.File(path, "a") as hdf:
        data = hdf["subj_b/input/data"]
        values = data[()]
        values[2, 3, 4, 1] = np.nan
        values[5, 0, 1, 0] = np.inf
        data[...] = values
    dataset = MultiSubjectDataset(path, lazy=lazy)
    expected = (f"HDF5 file '{path}', subject 'subj_b', group 'input': "
                "expected finite values, found 2 NaN or Inf (the first at "
                "voxel (2, 3, 4), feature 1).")
    if not lazy:
        with pytest.raises(DwiMLUserError) as error:
            dataset.load_data()
    else:
        dataset.load_data()
        with pytest.raises(DwiMLUserError) as error:
            dataset.training_set.get_subject(1).mri_data_list[0].as_tensor()
    assert str(error.value) == expected


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_volume_value_of_each_kind_is_found(tmp_path, bad):
    # The check runs on min and max (no copy of the volume): one NaN, +Inf
    # or -Inf alone must still be found.
    path = _write(tmp_path)
    with h5py.File(path, "a") as hdf:
        data = hdf["subj_b/input/data"]
        values = data[()]
        values[1, 2, 0, 1] = bad
        data[...] = values
    with pytest.raises(DwiMLUserError) as error:
        MultiSubjectDataset(path).load_data()
    assert str(error.value).endswith(
        "expected finite values, found 1 NaN or Inf (the first at voxel "
        "(1, 2, 0), feature 1).")


@pytest.mark.parametrize("lazy", [False, True])
def test_non_finite_streamline_points_are_named(tmp_path, lazy):
    # Before: a NaN point reached the interpolation, which failed with
    # "RuntimeError: Index 72 of input takes value -9223372036854775808".
    # Unused rows of 'data' (gaps) may hold anything.
    path = _write(tmp_path)
    with h5py.File(path, "a") as hdf:
        group = hdf["subj_a/streamlines"]
        points = group["data"][()]
        offsets = group["offsets"][()]
        points[offsets[7] + 1] = [1., np.nan, 2.]
        points[offsets[4] - 1] = np.nan  # a gap row: subj_a has gap_rows=3
        group["data"][...] = points
    dataset = MultiSubjectDataset(path, lazy=lazy)
    expected = (f"HDF5 file '{path}', subject 'subj_a', group 'streamlines': "
                "expected finite points, found NaN or Inf in streamline 7.")
    if lazy:
        dataset.load_data()
        sft = dataset.training_set.get_subject(0).sft_data_list[0]
        assert len(sft.get_streamlines([3, 4, 5])) == 3
        with pytest.raises(DwiMLUserError) as error:
            sft.get_streamlines([2, 7, 9])
    else:
        with pytest.raises(DwiMLUserError) as error:
            dataset.load_data()
    assert str(error.value) == expected
