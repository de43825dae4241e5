"""Lazy reads of many subjects at once: one read plan over several
datasets of a file (``read_row_ranges_of_datasets``), and the streamlines
of a mixed batch read together (``read_points_of_many``), give what reading
each dataset or subject on its own gives, refusals and warnings included.
"""
import logging

import h5py
import numpy as np
import pytest
from reference_hdf5 import make_example_subject, write_reference_hdf5

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.dataset.hdf5_handle import Hdf5Handle
from dwi_ml.data.dataset.row_ranges import (
    MERGE_GAP_BYTES,
    plan_blocks,
    read_row_ranges,
    read_row_ranges_of_datasets,
)
from dwi_ml.data.dataset.sft_data import read_points_of_many
from dwi_ml.data.hdf5.layout import (
    CHECKSUM_SUFFIX,
    ROWS_PER_CHECKSUM_ATTR,
    row_block_checksums,
)
from dwi_ml.data.packed import split_by_lengths
from dwi_ml.io_utils.errors import DwiMLUserError

GAP_ROWS = MERGE_GAP_BYTES // 12  # float32 rows of 3


def _write_datasets(path, rng):
    """Datasets of every storage the raw reads handle, and two they don't
    (compressed; float64), with their contents."""
    arrays = {}
    with h5py.File(path, "w") as hdf:
        for key, chunks in (("contiguous/data", None),
                            ("chunked/data", (7, 3)),
                            ("scattered/data", (7, 3)),
                            ("small/data", (16, 3))):
            data = rng.random((3_000 if key != "small/data" else 40, 3),
                              dtype=np.float32)
            dataset = hdf.create_dataset(key, shape=data.shape,
                                         dtype=data.dtype, chunks=chunks)
            # Chunks written last to first lie in reverse file order.
            step = -7 if key == "scattered/data" else len(data)
            first_rows = (range(len(data) // 7 * 7, -1, -7) if step < 0
                          else [0])
            for first_row in first_rows:
                dataset[first_row:first_row + abs(step)] = \
                    data[first_row:first_row + abs(step)]
            arrays[key] = data
        data = rng.random((500, 3), dtype=np.float32)
        hdf.create_dataset("gzip/data", data=data, chunks=(7, 3),
                           compression="gzip")
        arrays["gzip/data"] = data
        data = rng.random((500, 3))
        hdf.create_dataset("float64/data", data=data)
        arrays["float64/data"] = data
    return arrays


def _ranges(rng, nb_rows):
    """Ranges over chunk ends, overlapping, repeated, empty, near (merged
    by the gap) and far."""
    starts = np.concatenate([rng.integers(0, nb_rows - 20, 40),
                             [0, 0, nb_rows - 3, 5]])
    counts = np.concatenate([rng.integers(0, 20, 40), [3, 3, 3, 0]])
    return starts, counts


@pytest.mark.parametrize("keys", [
    ["contiguous/data", "chunked/data", "scattered/data", "small/data"],
    ["scattered/data", "small/data"]])
def test_one_plan_reads_what_each_dataset_gives(tmp_path, keys):
    rng = np.random.default_rng(5)
    path = str(tmp_path / "rows.hdf5")
    arrays = _write_datasets(path, rng)
    handle = Hdf5Handle(path)
    # The row space grows with new datasets: earlier ones keep their place.
    for chosen in (keys[:2], keys, keys[::-1], keys):
        ranges = [_ranges(rng, len(arrays[key])) for key in chosen]
        buffer, positions = read_row_ranges_of_datasets(
            handle, chosen, [starts for starts, _ in ranges],
            [counts for _, counts in ranges])
        assert len(positions) == len(chosen)
        for key, (starts, counts), key_positions in zip(chosen, ranges,
                                                        positions):
            assert len(key_positions) == len(starts)
            for start, count, position in zip(starts, counts,
                                              key_positions):
                np.testing.assert_array_equal(
                    buffer[position:position + count],
                    arrays[key][start:start + count])
        # The buffer holds each dataset's own blocks, no more: no block
        # spans two datasets, and each one merges its ranges as alone.
        expected_rows = 0
        for key, (starts, counts) in zip(chosen, ranges):
            alone, _ = read_row_ranges(handle, key, starts, counts)
            expected_rows += len(alone)
        assert len(buffer) == expected_rows


@pytest.mark.parametrize("keys", [
    ["chunked/data"], ["chunked/data", "chunked/data"],
    # Compressed, or another dtype: each dataset is read on its own.
    ["chunked/data", "gzip/data"], ["contiguous/data", "float64/data"]])
def test_datasets_that_cannot_share_a_read_are_left_to_the_caller(
        tmp_path, keys):
    path = str(tmp_path / "rows.hdf5")
    _write_datasets(path, np.random.default_rng(5))
    ranges = [np.array([0, 10])] * len(keys)
    assert read_row_ranges_of_datasets(Hdf5Handle(path), keys, ranges,
                                       ranges) is None


def test_datasets_end_to_end_do_not_share_a_block(tmp_path):
    # A range at the end of one dataset and one at the start of the next
    # are GAP_ROWS + 1 apart in the row space: never merged, and the rows
    # between are not read.
    path = str(tmp_path / "two.hdf5")
    first = np.arange(30, dtype=np.float32).reshape(10, 3)
    second = -np.arange(30, dtype=np.float32).reshape(10, 3)
    with h5py.File(path, "w") as hdf:
        hdf.create_dataset("a/data", data=first)
        hdf.create_dataset("b/data", data=second)
    handle = Hdf5Handle(path)
    buffer, (in_a, in_b) = read_row_ranges_of_datasets(
        handle, ["a/data", "b/data"], [np.array([8]), np.array([0])],
        [np.array([2]), np.array([2])])
    np.testing.assert_array_equal(buffer, np.concatenate([first[8:],
                                                          second[:2]]))
    assert in_a.tolist() == [0] and in_b.tolist() == [2]
    assert plan_blocks(np.array([8, 10 + GAP_ROWS + 1]), np.array([2, 2]),
                       GAP_ROWS)[0].tolist() == [8, 10 + GAP_ROWS + 1]


def test_a_damaged_dataset_is_named_among_many(tmp_path):
    path = str(tmp_path / "checked.hdf5")
    rng = np.random.default_rng(3)
    keys = [f"subj{i}/streamlines/data" for i in range(3)]
    with h5py.File(path, "w") as hdf:
        for key in keys:
            data = rng.random((700, 3), dtype=np.float32)
            hdf.create_dataset(key, data=data, chunks=(7, 3))
            checksums = hdf.create_dataset(
                key + CHECKSUM_SUFFIX, data=row_block_checksums(data, 10))
            checksums.attrs[ROWS_PER_CHECKSUM_ATTR] = 10
        address = hdf[keys[1]].id.get_chunk_info_by_coord(
            (350, 0)).byte_offset
    with open(path, "r+b") as file:  # row 352 of subj1 (block 35)
        file.seek(address + 2 * 12)
        file.write(np.float32(7.).tobytes())
    handle = Hdf5Handle(path)
    starts = [np.array([0, 345]), np.array([600, 340]), np.array([5])]
    counts = [np.array([30, 20]), np.array([100, 15]), np.array([3])]
    with pytest.raises(DwiMLUserError,
                       match=f"rows 350 to 359 of dataset '{keys[1]}'"):
        read_row_ranges_of_datasets(handle, keys, starts, counts)
    # Without the damaged rows (all rows of a file this small are within
    # the merge gap: one block per dataset), the read passes, its blocks
    # checked once.
    starts[1], counts[1] = np.array([600, 360]), np.array([100, 5])
    for _ in range(2):
        buffer, positions = read_row_ranges_of_datasets(handle, keys, starts,
                                                        counts)
        with h5py.File(path, "r") as hdf:
            for key, key_starts, key_counts, key_positions in zip(
                    keys, starts, counts, positions):
                for start, count, position in zip(key_starts, key_counts,
                                                  key_positions):
                    np.testing.assert_array_equal(
                        buffer[position:position + count],
                        hdf[key][start:start + count])


# ---------------------------------------------- streamlines of subjects --

SUBJECTS = ["subj_a", "subj_b", "subj_c", "subj_d"]


def _lazy_file(tmp_path, edit=None):
    rng = np.random.default_rng(11)
    subjects = {name: make_example_subject(rng, nb_streamlines=12 + i,
                                           gap_rows=i % 2)
                for i, name in enumerate(SUBJECTS)}
    path = str(tmp_path / "file.hdf5")
    write_reference_hdf5(path, subjects, training_subjs=SUBJECTS)
    if edit is not None:
        with h5py.File(path, "a") as hdf:
            edit(hdf)
    dataset = MultiSubjectDataset(path, lazy=True)
    dataset.load_data()
    subset = dataset.training_set
    sfts = [subset.get_subject(subset.subjects.index(name)).sft_data_list[0]
            for name in SUBJECTS]
    return path, sfts


def _assert_same_reads(together, alone):
    for (data, offsets, lengths), (data1, offsets1, lengths1) in zip(
            together, alone):
        np.testing.assert_array_equal(lengths, lengths1)
        for offset, length, offset1 in zip(offsets, lengths, offsets1):
            np.testing.assert_array_equal(data[offset:offset + length],
                                          data1[offset1:offset1 + length])


def test_streamlines_of_many_subjects_read_together_are_each_ones(tmp_path):
    _, sfts = _lazy_file(tmp_path)
    ids = [np.array([3, 0, 3, 11]), np.array([], dtype=np.int64),
           np.array([12, 1]), np.arange(15)]
    together = read_points_of_many(sfts, ids)
    _assert_same_reads(together, [sft.read_points(i)
                                  for sft, i in zip(sfts, ids)])
    # One buffer for all (the loader gathers from it once).
    assert all(read[0] is together[0][0] for read in together)


@pytest.mark.parametrize("bad_ids, message", [
    ([0, 20], r"Streamline ids must lie in \[0, 13\); got min 0, max 20"),
    ([-1], r"Streamline ids must lie in \[0, 13\); got min -1"),
    ([0.5], "Streamline ids must be integers; got float64 values")])
def test_bad_ids_of_one_subject_are_refused_as_alone(tmp_path, bad_ids,
                                                     message):
    _, sfts = _lazy_file(tmp_path)
    with pytest.raises(IndexError, match=message):
        read_points_of_many(sfts, [np.array([0]), np.array(bad_ids),
                                   np.array([1]), np.array([2])])


def test_non_finite_points_are_named_with_their_subject(tmp_path):
    def put_nan(hdf):
        group = hdf["subj_c/streamlines"]
        points = group["data"][()]
        points[group["offsets"][5] + 1] = [1., np.nan, 2.]
        group["data"][...] = points
    path, sfts = _lazy_file(tmp_path, put_nan)
    # Streamlines of subj_c without the NaN: read.
    read_points_of_many(sfts, [np.array([0])] * 2 + [np.array([4, 6])]
                        + [np.array([0])])
    with pytest.raises(DwiMLUserError) as error:
        read_points_of_many(sfts, [np.array([0, 1])] * 2
                            + [np.array([2, 5])] + [np.array([0])])
    assert str(error.value) == (
        f"HDF5 file '{path}', subject 'subj_c', group 'streamlines': "
        "expected finite points, found NaN or Inf in streamline 5.")


def test_repeated_points_are_dropped_and_their_subject_named(tmp_path,
                                                             caplog):
    def repeat_a_point(hdf):
        group = hdf["subj_b/streamlines"]
        points = group["data"][()]
        row = group["offsets"][2] + 1
        points[row] = points[row - 1]
        group["data"][...] = points
    path, sfts = _lazy_file(tmp_path, repeat_a_point)
    # Streamlines with others between them: read alone, a subject's blocks
    # hold those too, where a compact copy would not.
    ids = [np.array([0, 3]), np.array([2, 0]), np.array([1, 4]),
           np.array([0, 2])]
    with caplog.at_level(logging.WARNING):
        together = read_points_of_many(sfts, ids)
    assert [record.getMessage() for record in caplog.records] == [
        f"HDF5 file '{path}', subject 'subj_b', group 'streamlines': read "
        "without 1 points equal to the point before them (a zero-length "
        "segment has no direction); dwiml_create_hdf5_dataset.py stores "
        "none."]
    alone = [sft.read_points(i) for sft, i in zip(sfts, ids)]
    _assert_same_reads(together, alone)
    assert together[1][2][0] == sfts[1].lengths[2] - 1
    # The others keep their own rows of the buffer, as read alone: a repeat
    # in one subject made every subject check the whole buffer.
    for subject in (0, 2, 3):
        assert len(together[subject][0]) == len(alone[subject][0])


def test_subjects_of_several_dtypes_are_read_each_in_its_own(tmp_path):
    def to_float64(hdf):
        group = hdf["subj_d/streamlines"]
        points = group["data"][()].astype(np.float64)
        del group["data"]
        group.create_dataset("data", data=points)
    _, sfts = _lazy_file(tmp_path, to_float64)
    ids = [np.array([0, 1])] * 4
    together = read_points_of_many(sfts, ids)
    alone = [sft.read_points(i) for sft, i in zip(sfts, ids)]
    _assert_same_reads(together, alone)
    assert [read[0].dtype for read in together] == [np.float32] * 3 + [
        np.float64]


def test_split_by_lengths_is_numpys_split_at_the_cumulative_lengths():
    array = np.arange(20).reshape(10, 2)
    for lengths in ([10], [0, 3, 0, 7], [2, 2, 2, 2, 2, 0], []):
        pieces = split_by_lengths(array, np.array(lengths, dtype=np.int64))
        expected = (np.split(array, np.cumsum(lengths)[:-1]) if lengths
                    else [])
        assert len(pieces) == len(expected)
        for piece, other in zip(pieces, expected):
            np.testing.assert_array_equal(piece, other)
            assert piece.base is array or piece.base is array.base
