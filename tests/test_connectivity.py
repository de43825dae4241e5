"""Connectivity matrices from labels and from blocs, their score, and the
three scripts: exact values on hand-built cases."""
import json

import numpy as np
import pytest
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from error_checks import assert_user_error, truncate
from nibabel.streamlines import ArraySequence
from scoring_data import GRID, line_along_x, save_nifti, save_trk

from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_blocs import main as blocs_main
from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_labels import main as labels_main
from dwi_ml.cli.dwiml_compute_connectivity_score import main as score_main
from dwi_ml.data.hdf5.connectivity import matrix_on_label_nodes
from dwi_ml.data.packed import make_array_sequence
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.connectivity import (
    connectivity_from_blocs,
    connectivity_from_labels,
    connectivity_matrix,
    endpoint_blocs,
    fold_upper,
    label_nodes,
    parse_nb_blocs,
    score_connectivity,
)


def _labels():
    """Label 1 for x in {0, 1, 2}, label 3 for x in {7, 8, 9}, 0 between."""
    labels = np.zeros(GRID, dtype=np.int16)
    labels[:3] = 1
    labels[7:] = 3
    return labels


def _streamlines():
    return ArraySequence([
        line_along_x(2.5, 2.5),                              # 1 -> 3
        line_along_x(2.5, 2.5)[::-1],                        # 3 -> 1
        line_along_x(2.5, 2.5, np.arange(5) + 0.5),          # 1 -> 0
        np.array([[-2., 5.5, 5.5], [5.5, 5.5, 5.5]]),        # out -> 0
        np.array([[9.5, 2.5, 2.5], [7.5, 2.5, 2.5]]),        # 3 -> 3
    ])


# Nodes are the labels present, in order (the reference dwi_ml's): 0, 1
# and 3 are rows 0, 1 and 2.
EXPECTED_FROM_LABELS = np.zeros((3, 3), dtype=np.int64)
EXPECTED_FROM_LABELS[1, 2] = 2
EXPECTED_FROM_LABELS[0, 1] = 1
EXPECTED_FROM_LABELS[0, 0] = 1
EXPECTED_FROM_LABELS[2, 2] = 1

# 2 blocs per axis: x < 5 is part 0. The endpoints' blocs (a, b, c) ->
# 4a + 2b + c: (0,0,0) -> 0 and (1,0,0) -> 4 for the first two and the
# fifth streamlines; (0,0,0) twice for the third; the fourth starts at
# x = -2, clipped to part 0, (0,1,1) -> 3, and ends in (1,1,1) -> 7.
EXPECTED_FROM_BLOCS = np.zeros((8, 8), dtype=np.int64)
EXPECTED_FROM_BLOCS[0, 4] = 2
EXPECTED_FROM_BLOCS[0, 0] = 1
EXPECTED_FROM_BLOCS[3, 7] = 1
EXPECTED_FROM_BLOCS[4, 4] = 1


def test_matrix_is_upper_triangular_and_counts_each_streamline_once():
    matrix = connectivity_matrix([0, 2, 1, 1], [2, 0, 1, 3], 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 2], expected[1, 1], expected[1, 3] = 2, 1, 1
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64
    binary = connectivity_matrix([0, 2, 1, 1], [2, 0, 1, 3], 4, binary=True)
    np.testing.assert_array_equal(binary, expected > 0)


@pytest.mark.parametrize("start, end, expected", [
    ([0, 5], [1, 1], "argument start_nodes: expected nodes in [0, 3), found "
                     "5 (streamline 1, 1 out of range in all)."),
    ([0, 1], [-1, 2], "argument end_nodes: expected nodes in [0, 3), found "
                      "-1 (streamline 0, 1 out of range in all)."),
    ([0, 1], [1], "expected two (N,) arrays of the same length, found "
                  "shapes (2,) and (1,)."),
])
def test_matrix_refuses_nodes_out_of_range(start, end, expected):
    """Node 5 of 3 went silently into cell [2, 2] (bincount's flat index);
    a negative one was a numpy error."""
    with pytest.raises(DwiMLUserError) as error:
        connectivity_matrix(start, end, 3)
    assert str(error.value).startswith("connectivity_matrix ")
    assert str(error.value).endswith(expected)


def test_blocs_refuse_a_nan_endpoint_but_count_an_empty_streamline():
    """An empty streamline (NaN endpoints) counts in bloc 0, as documented;
    a NaN endpoint of another counted there silently too."""
    # Streamlines 0 (empty), 1 (two points), 2 (its last point NaN).
    data = np.array([[1.5, 1.5, 1.5], [3.5, 3.5, 3.5], [1.5, 1.5, 1.5],
                     [np.nan, 1.5, 1.5]])
    lengths = np.array([0, 2, 2])
    empty_and_good = make_array_sequence(data[:2], np.array([0, 0]),
                                         lengths[:2])
    matrix = connectivity_from_blocs(empty_and_good, (4, 4, 4), 2)
    # The empty one joins bloc 0 to itself; the other bloc 0 to bloc 7.
    assert matrix[0, 0] == 1 and matrix[0, 7] == 1 and matrix.sum() == 2
    with_nan = make_array_sequence(data, np.array([0, 0, 2]), lengths)
    for compute in (lambda s: connectivity_from_blocs(s, (4, 4, 4), 2),
                    lambda s: connectivity_from_labels(s, _labels())):
        with pytest.raises(DwiMLUserError) as error:
            compute(with_nan)
        assert str(error.value) == (
            "streamlines_vox: expected finite endpoints, found NaN or "
            "infinite ones in 1 streamline(s), streamline 2 first.")


def test_labels_must_be_whole_numbers_on_a_3d_grid():
    """Labels 3.0 and 7.5 gave a matrix of zeros; a 2-D volume a numpy
    error."""
    labels = _labels().astype(np.float32)
    np.testing.assert_array_equal(
        connectivity_from_labels(_streamlines(), labels),
        EXPECTED_FROM_LABELS)    # whole floats are labels
    labels[labels == 3] = 7.5
    with pytest.raises(DwiMLUserError) as error:
        connectivity_from_labels(_streamlines(), labels)
    assert str(error.value) == (
        "label_volume: expected integer labels, found 300 voxel(s) of "
        "non-integer value, e.g. 7.5.")
    with pytest.raises(DwiMLUserError) as error:
        connectivity_from_labels(_streamlines(), _labels()[:, :, 0])
    assert str(error.value) == ("label_volume: expected a 3-D (X, Y, Z) "
                                "volume of labels, found shape (10, 10).")


def test_labels_refuse_streamlines_of_another_grid():
    """Every endpoint outside the label volume gave [[0]] (background
    only) with no word: the streamlines are on another grid."""
    far = ArraySequence([line_along_x(25.5, 25.5, np.array([20.5, 30.5])),
                         line_along_x(-3.5, 2.5)])
    # From blocs, they counted in the border blocs: refused the same way.
    for compute in (lambda s: connectivity_from_labels(s, _labels()),
                    lambda s: connectivity_from_blocs(s, GRID, 2)):
        with pytest.raises(DwiMLUserError) as error:
            compute(far)
        assert str(error.value) == (
            "streamlines_vox: expected endpoints inside the volume of shape "
            "(10, 10, 10) (voxel space, corner origin), found 4 of 4 "
            "outside; the streamlines are probably not in that volume's "
            "space.")
    # One endpoint inside is enough; no streamline at all is no matrix.
    inside = ArraySequence([far[0], line_along_x(2.5, 2.5,
                                                 np.array([-3., 1.5]))])
    # The far one joins the background to itself (counted as before).
    assert connectivity_from_labels(inside, _labels()).tolist() == [
        [1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert connectivity_from_labels(ArraySequence(), _labels()).sum() == 0
    # From blocs, in the border blocs: bloc 7 (far), bloc 0 (x = -3).
    matrix = connectivity_from_blocs(inside, GRID, 2)
    assert (matrix[7, 7], matrix[0, 0], matrix.sum()) == (1, 1, 2)


def test_a_list_of_streamlines_is_read_as_an_array_sequence():
    """A list of (n, 3) arrays: "'list' object has no attribute '_data'"."""
    as_list = list(_streamlines())
    np.testing.assert_array_equal(
        connectivity_from_labels(as_list, _labels()), EXPECTED_FROM_LABELS)
    np.testing.assert_array_equal(
        connectivity_from_blocs(as_list, GRID, 2), EXPECTED_FROM_BLOCS)


def test_from_labels():
    matrix = connectivity_from_labels(_streamlines(), _labels())
    np.testing.assert_array_equal(matrix, EXPECTED_FROM_LABELS)
    assert matrix.sum() == 5
    with pytest.raises(DwiMLUserError, match=">= 0"):
        connectivity_from_labels(_streamlines(), -_labels())
    assert label_nodes(_labels()).tolist() == [0, 1, 3]


def test_from_labels_without_background():
    """Labels 2 and 5 everywhere: rows 0 and 1; the streamline with an
    endpoint outside the volume joins no node and is not counted."""
    labels = np.where(_labels() == 3, 5, 2)
    matrix = connectivity_from_labels(_streamlines(), labels)
    expected = np.zeros((2, 2), dtype=np.int64)
    # 2 -> 5 twice; 2 -> 2 (x from 0.5 to 4.5: labels 2 and 2); 5 -> 5.
    expected[0, 1], expected[0, 0], expected[1, 1] = 2, 1, 1
    np.testing.assert_array_equal(matrix, expected)
    assert label_nodes(labels).tolist() == [2, 5]


def test_matrices_indexed_by_label_value_are_converted():
    """A matrix of our earlier layout (row k is label k, absent labels
    included) keeps the rows of the labels present; the reference's
    layout is kept as it is; any other size is one clear error."""
    by_value = np.arange(16).reshape(4, 4)
    by_value[2], by_value[:, 2] = 0, 0  # label 2 is not in the volume
    converted = matrix_on_label_nodes(by_value, _labels(), "m")
    np.testing.assert_array_equal(converted, [[0, 1, 3], [4, 5, 7],
                                              [12, 13, 15]])
    # A connection on label 2 would be lost: not this volume's matrix.
    by_value[2, 3] = 1
    with pytest.raises(DwiMLUserError, match=r"m: a row per label value, "
                       r"with connections on label\(s\) \[2\]"):
        matrix_on_label_nodes(by_value, _labels(), "m")
    compact = np.ones((3, 3))
    assert matrix_on_label_nodes(compact, _labels(), "m") is compact
    # Without the background's row (labels 1 and 3 only).
    np.testing.assert_array_equal(
        matrix_on_label_nodes(np.array([[1, 2], [3, 4]]), _labels(), "m"),
        [[0, 0, 0], [0, 1, 2], [0, 3, 4]])
    with pytest.raises(DwiMLUserError,
                       match=r"m: expected 3 x 3, one row per distinct "
                             r"label of the label volume \(or 2 x 2 without "
                             r"label 0\), found 5 x 5"):
        matrix_on_label_nodes(np.ones((5, 5)), _labels(), "m")


def test_from_blocs():
    matrix = connectivity_from_blocs(_streamlines(), GRID, 2)
    np.testing.assert_array_equal(matrix, EXPECTED_FROM_BLOCS)
    # (2, 1, 5) blocs: (0.5, 2.5, 9.5) is in part (0, 0, 4) -> bloc 4,
    # (9.5, 2.5, 0.5) in (1, 0, 0) -> bloc 5.
    one = ArraySequence([np.array([[0.5, 2.5, 9.5], [9.5, 2.5, 0.5]])])
    starts, ends = endpoint_blocs(one, GRID, (2, 1, 5))
    assert (starts[0], ends[0]) == (4, 5)
    matrix = connectivity_from_blocs(one, GRID, (2, 1, 5), binary=True)
    assert matrix.shape == (10, 10) and matrix.dtype == bool
    assert np.flatnonzero(matrix).tolist() == [4 * 10 + 5]
    assert parse_nb_blocs([3]) == (3, 3, 3)
    with pytest.raises(DwiMLUserError, match="1 or 3 integers"):
        parse_nb_blocs([2, 2])


def _score_case():
    true = np.zeros((6, 6), dtype=np.int64)
    true[0, 4], true[1, 2], true[3, 3] = 5, 3, 1
    predicted = np.zeros((6, 6), dtype=np.int64)
    predicted[0, 4], predicted[2, 5], predicted[3, 3] = 2, 6, 2
    return predicted, true


# Two of the three true connections are predicted; two of the three
# predicted connections are true; 4 of the 10 predicted streamlines join a
# true connection.
EXPECTED_SCORES = {
    "true_connections_found": 2 / 3, "predicted_connections_true": 2 / 3,
    "connections_f1": 4 / 6, "streamlines_in_true_connections": 0.4,
    "nb_true_connections": 3.0, "nb_predicted_connections": 3.0,
    "nb_predicted_streamlines": 10.0,
}


def test_shares_of_zero_over_zero_are_undefined():
    """A share whose denominator is 0 was 0.0, the score of a prediction
    that is all wrong: None (undefined) now; other shares keep a value."""
    empty, one = np.zeros((3, 3), dtype=np.int64), np.eye(3, dtype=np.int64)
    cases = [
        # No true connection: recall undefined; the 3 predicted are false.
        (one, empty, {"true_connections_found": None,
                      "predicted_connections_true": 0.0,
                      "connections_f1": 0.0,
                      "streamlines_in_true_connections": 0.0}),
        # Nothing predicted: precision and the streamlines' share undefined.
        (empty, one, {"true_connections_found": 0.0,
                      "predicted_connections_true": None,
                      "connections_f1": 0.0,
                      "streamlines_in_true_connections": None}),
        (empty, empty, {"true_connections_found": None,
                        "predicted_connections_true": None,
                        "connections_f1": None,
                        "streamlines_in_true_connections": None}),
    ]
    for predicted, true, expected in cases:
        scores = score_connectivity(predicted, true)
        assert {name: scores[name] for name in expected} == expected


def test_score():
    predicted, true = _score_case()
    assert score_connectivity(predicted, true) == EXPECTED_SCORES
    # A symmetric matrix, or a binary true one, scores the same.
    symmetric = predicted + predicted.T - np.diag(np.diag(predicted))
    np.testing.assert_array_equal(fold_upper(symmetric), predicted)
    assert score_connectivity(symmetric, true > 0) == EXPECTED_SCORES
    perfect = score_connectivity(true, true)
    assert (perfect["true_connections_found"], perfect["connections_f1"],
            perfect["streamlines_in_true_connections"]) == (1.0, 1.0, 1.0)
    with pytest.raises(DwiMLUserError, match="same shape"):
        score_connectivity(predicted, true[:5, :5])


# The scripts.


@pytest.fixture
def files(tmp_path):
    labels = save_nifti(tmp_path / "labels.nii.gz", data=_labels())
    return {"labels": labels,
            "tractogram": save_trk(tmp_path / "t.trk", _streamlines(),
                                   labels)}


def test_scripts_write_the_matrices_and_the_scores(files, tmp_path, capsys):
    out = str(tmp_path / "labels.npy")
    capsys.readouterr()
    labels_main([files["tractogram"], files["labels"], out])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_LABELS)
    # One line says what was written where (every streamline counted).
    assert capsys.readouterr().out == (
        f"Saved the 3 x 3 matrix of {int(EXPECTED_FROM_LABELS.sum())} "
        f"streamlines in {out}.\n")
    labels_main([files["tractogram"], files["labels"], out, "--binary",
                 "-f", "--out_labels", str(tmp_path / "rows.txt")])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_LABELS > 0)
    assert (tmp_path / "rows.txt").read_text().split() == ["0", "1", "3"]

    out = str(tmp_path / "blocs.npy")
    capsys.readouterr()
    blocs_main([files["tractogram"], files["labels"], "2", out])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_BLOCS)
    # One line says what was written where.
    assert capsys.readouterr().out == (
        f"Saved the 8 x 8 matrix (2 x 2 x 2 blocs) of {len(_streamlines())} "
        f"streamlines in {out}.\n")
    blocs_main([files["tractogram"], files["labels"], "2", "2", "2", out,
                "-f"])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_BLOCS)

    predicted, true = _score_case()
    np.save(tmp_path / "predicted.npy", predicted)
    np.save(tmp_path / "true.npy", true)
    out = str(tmp_path / "score.json")
    capsys.readouterr()
    score_main([str(tmp_path / "predicted.npy"), str(tmp_path / "true.npy"),
                "--out_json", out])
    assert "true_connections_found" in capsys.readouterr().out
    with open(out) as f:
        saved = json.load(f)
    # JSON keeps float64 exactly; what was scored is recorded with them.
    assert {name: saved[name] for name in EXPECTED_SCORES} == EXPECTED_SCORES
    assert saved["inputs"] == {
        "predicted_matrix": str(tmp_path / "predicted.npy"),
        "true_matrix": str(tmp_path / "true.npy")}
    assert saved["options"] == {} and "dwi_ml_version" in saved
    assert type(saved["nb_predicted_streamlines"]) is int   # a count


def _error(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "error:" in message
    return message


def test_script_errors(files, tmp_path, capsys):
    existing = tmp_path / "existing.npy"
    np.save(existing, np.zeros((2, 2)))
    bad_labels = save_nifti(tmp_path / "bad.nii.gz",
                            data=np.full(GRID, 0.5, dtype=np.float32))
    inputs = [files["tractogram"], files["labels"]]
    cases = [
        (labels_main, [str(tmp_path / "missing.trk"), files["labels"],
                       str(tmp_path / "o.npy")], "missing.trk"),
        (labels_main, [*inputs, str(existing)], "already exists"),
        (labels_main, [*inputs, str(tmp_path / "o.txt")], ".npy"),
        (labels_main, [*inputs, str(tmp_path / "o.npy"), "--out_labels",
                       str(tmp_path / "rows.csv")], "--out_labels"),
        (labels_main, [files["tractogram"], bad_labels,
                       str(tmp_path / "o.npy")], "integers >= 0"),
        (blocs_main, [*inputs, "2", "2", str(tmp_path / "o.npy")],
         "1 or 3 integers"),
        (blocs_main, [*inputs, "2", str(existing)], "already exists"),
        (score_main, [str(existing), str(tmp_path / "missing.npy")],
         "missing.npy"),
        (score_main, [str(existing), files["labels"]],
         "expected the extension .npy, found '.nii.gz'"),
        (score_main, [str(existing), str(tmp_path / "not_npy.npy")],
         "found a file without the .npy header"),
        # A NaN was scored (nan streamlines), and 100 blocs per axis of a
        # 10-voxel grid asked for a 7 TiB matrix (a MemoryError traceback).
        (score_main, [str(existing), str(tmp_path / "nan.npy")],
         "expected finite counts, found 1 NaN or infinite entries"),
        (blocs_main, [*inputs, "100", str(tmp_path / "o.npy")],
         f"at most the volume's size along each axis {list(GRID)}"),
        (blocs_main, [*inputs, "2", "2", "11", str(tmp_path / "o.npy")],
         "found [2, 2, 11]"),
    ]
    (tmp_path / "not_npy.npy").write_text("not a matrix")
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0], [1.0, 0.0]]))
    for main, argv, expected in cases:
        assert expected in _error(capsys, main, argv)
    np.testing.assert_array_equal(np.load(existing), np.zeros((2, 2)))
    assert not (tmp_path / "o.npy").exists()


def test_label_volume_errors_say_what_is_wrong(files, tmp_path, capsys):
    """A label volume of the wrong kind: the message says which value or
    shape is wrong (it only gave the shape and dtype, which looked fine)."""
    labels = _labels().astype(np.float32)
    cases = []
    for name, value, expected in [
            ("fraction", 1.5, "non-integer values such as 1.5"),
            ("negative", -1, "negative values such as -1"),
            ("nan", np.nan, "1 NaN or infinite value(s)")]:
        data = labels.copy()
        data[0, 0, 0] = value
        cases.append((save_nifti(tmp_path / f"{name}.nii.gz", data=data),
                      expected))
    cases.append((save_nifti(tmp_path / "4d.nii.gz",
                             data=np.stack([labels, labels], axis=-1)),
                  "found shape (10, 10, 10, 2)"))
    for path, expected in cases:
        message = _error(capsys, labels_main, [files["tractogram"], path,
                                               str(tmp_path / "o.npy")])
        assert f"labels '{path}'" in message and expected in message
    assert not (tmp_path / "o.npy").exists()


def test_score_script_names_the_matrix_of_the_wrong_shape(tmp_path, capsys):
    """Matrices of the wrong shape or kind, or empty files: the message
    names the file (it said 'matrices', and took complex numbers)."""
    paths = {}
    for name, matrix in [("square", np.eye(3)), ("big", np.eye(4)),
                         ("row", np.ones(3)), ("rect", np.ones((2, 3))),
                         ("complex", np.eye(3) * (1 + 1j)),
                         ("negative", -np.eye(3)),
                         ("nothing", np.zeros((0, 0)))]:
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], matrix)
    cases = [
        (["row", "square"], "matrix '{row}': expected a square 2-D array "
                            "of at least one node, found shape (3,)"),
        (["square", "rect"], "matrix '{rect}': expected a square 2-D array "
                             "of at least one node, found shape (2, 3)"),
        # Two of them scored 0.
        (["nothing", "nothing"], "matrix '{nothing}': expected a square 2-D "
                                 "array of at least one node, found shape "
                                 "(0, 0)"),
        (["square", "big"], "matrices '{square}' (3 x 3) and '{big}' "
                            "(4 x 4): expected the same shape"),
        (["complex", "square"], "matrix '{complex}': expected numbers or "
                                "booleans, found dtype complex128"),
        (["square", "negative"], "matrix '{negative}': expected counts >= 0, "
                                 "found 3 negative entries"),
        # 0 bytes: numpy's EOFError went through as a traceback.
        (["empty", "square"], "matrix '{empty}': expected a .npy array, "
                              "found a file without the .npy header (0 "
                              "bytes"),
    ]
    paths["empty"] = str(tmp_path / "empty.npy")
    open(paths["empty"], "wb").close()
    for names, expected in cases:
        message = _error(capsys, score_main, [paths[n] for n in names])
        assert expected.format(**paths) in message


def test_printed_sum_of_a_weighted_matrix_is_not_rounded(tmp_path, capsys):
    """A weighted (float) predicted matrix: its sum was printed as a count,
    rounded ('nb_predicted_streamlines 2' for 2.4)."""
    np.save(tmp_path / "weighted.npy", np.diag([0.8, 0.8, 0.8]))
    np.save(tmp_path / "true.npy", np.eye(3, dtype=np.int64))
    capsys.readouterr()
    score_main([str(tmp_path / "weighted.npy"), str(tmp_path / "true.npy")])
    printed = dict(line.split() for line in
                   capsys.readouterr().out.strip().splitlines())
    assert printed["nb_predicted_streamlines"] == "2.4000"
    assert printed["nb_true_connections"] == "3"


def test_truncated_label_volume_is_a_one_line_error(files, tmp_path,
                                                    capsys):
    """A label NIfTI cut short after its header: reading its data raised a
    traceback (only opening it was checked)."""
    path = save_nifti(tmp_path / "labels.nii", data=_labels())
    truncate(path, 0.8)
    message = _error(capsys, labels_main, [files["tractogram"], path,
                                           str(tmp_path / "o.npy")])
    assert f"labels '{path}': expected a NIfTI file" in message
    assert "truncated or corrupt" in message
    assert not (tmp_path / "o.npy").exists()


def test_script_warns_of_streamlines_left_out_without_background(tmp_path,
                                                                 capsys):
    """Without a background, a streamline with an endpoint outside the
    volume joins no node: the script said 'matrix of 5 streamlines' of a
    matrix of 4."""
    labels = save_nifti(tmp_path / "labels.nii.gz",
                        data=np.where(_labels() == 3, 5, 2).astype(np.int16))
    tractogram = save_trk(tmp_path / "t.trk", _streamlines(), labels)
    for binary in ([], ["--binary"]):
        out = str(tmp_path / f"m{len(binary)}.npy")
        capsys.readouterr()
        labels_main([tractogram, labels, out, *binary])
        assert ("1 of 5 streamlines not counted: an endpoint outside the "
                "volume, which has no background (label 0)"
                in capsys.readouterr().err)
        assert np.load(out).sum() == (3 if binary else 4)


def test_a_matrix_larger_than_memory_is_refused_before_any_work(
        files, tmp_path, capsys):
    """10^6 nodes ask for 9 TB: refused in one line, where numpy could be
    killed by the system with no message (overcommitted memory)."""
    big_grid = (100, 100, 100)
    volume = save_nifti(tmp_path / "big.nii.gz", shape=big_grid)
    labels = save_nifti(tmp_path / "labels.nii.gz", shape=big_grid,
                        data=np.arange(10 ** 6, dtype=np.int32).reshape(
                            big_grid))
    out = tmp_path / "o.npy"
    for main, argv, where in [
            (blocs_main, [files["tractogram"], volume, "100", str(out)],
             "nb_blocs [100, 100, 100]"),
            (labels_main, [files["tractogram"], labels, str(out)],
             f"labels '{labels}'")]:
        message = _error(capsys, main, argv)
        assert where in message
        assert "fits in memory, found 1000000 nodes" in message
        assert "8381.9 GiB" in message
    assert not out.exists()


def test_labels_of_shape_xyz1_are_read_as_3d(files, tmp_path):
    """Some tools write a parcellation as (X, Y, Z, 1): the same labels."""
    labels_4d = save_nifti(tmp_path / "labels_4d.nii.gz",
                           data=_labels()[..., None])
    out = tmp_path / "o.npy"
    labels_main([files["tractogram"], labels_4d, str(out)])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_LABELS)


def test_a_tck_named_trk_is_a_one_line_error(files, tmp_path, capsys):
    """nibabel reads a tractogram by its content: a .tck renamed .trk
    gave a TCK header, whose text fields were compared as numbers (a
    traceback in four scripts)."""
    tck = tmp_path / "t.tck"
    sft = load_tractogram(files["tractogram"], "same",
                          bbox_valid_check=False)
    save_tractogram(sft, str(tck), bbox_valid_check=False)
    renamed = tmp_path / "renamed.trk"
    tck.rename(renamed)
    message = _error(capsys, labels_main, [str(renamed), files["labels"],
                                           str(tmp_path / "o.npy")])
    assert message.endswith(
        f"tractogram '{renamed}': expected TrackVis .trk content (its "
        "extension), found TCK content; give it its format's extension.")
    assert not (tmp_path / "o.npy").exists()


def _far_tck(tmp_path, nifti_path):
    """The streamlines of the tests moved 200 mm (100 voxels), as a .tck
    in another space than the volume's."""
    far = ArraySequence([points + 100 for points in _streamlines()])
    sft = StatefulTractogram(far, nifti_path, Space.VOX,
                             origin=Origin.TRACKVIS)
    path = str(tmp_path / "far.tck")
    save_tractogram(sft, path, bbox_valid_check=False)
    return path


def test_scripts_refuse_a_tractogram_outside_the_volume(files, tmp_path,
                                                        capsys):
    """All endpoints outside: from blocs, a warning and a matrix of the
    border blocs (exit 0); from labels, an error naming the library's
    argument 'streamlines_vox' after that warning. Both refuse it in one
    line naming the files."""
    far = _far_tck(tmp_path, files["labels"])
    out = tmp_path / "o.npy"
    expected = (
        f"tractogram '{far}': expected endpoints inside the volume of "
        f"'{files['labels']}' (shape (10, 10, 10)), found 10 of 10 outside; "
        "the streamlines are probably not in that volume's space.")
    for main, argv in [(blocs_main, [far, files["labels"], "2", out]),
                       (labels_main, [far, files["labels"], out])]:
        assert assert_user_error(main, argv, capsys, tmp_path) == expected
    # Endpoints partly outside are counted (the fourth streamline's first).
    labels_main([files["tractogram"], files["labels"], str(out)])
    np.testing.assert_array_equal(np.load(out), EXPECTED_FROM_LABELS)


def test_scripts_warn_that_an_empty_tractogram_gives_zeros(files, tmp_path,
                                                          capsys):
    """An empty tracking result is an input: the matrix of zeros is
    written (as before), with one warning that says why it is zeros."""
    empty = save_trk(tmp_path / "empty.trk", ArraySequence(),
                     files["labels"])
    for name, main, argv, shape in [
            ("blocs", blocs_main, ["2"], (8, 8)),
            ("labels", labels_main, [], (3, 3))]:
        out = tmp_path / f"{name}.npy"
        capsys.readouterr()
        main([empty, files["labels"], *argv, str(out)])
        captured = capsys.readouterr()
        assert captured.err == (f"WARNING: tractogram '{empty}' holds no "
                                "streamline: the matrix is all zeros.\n")
        assert "matrix" in captured.out and "of 0 streamlines" in captured.out
        matrix = np.load(out)
        assert matrix.shape == shape and not matrix.any()


def test_score_script_shows_undefined_shares_as_n_a(tmp_path, capsys):
    """An all-zero true matrix printed recall 0.0000 (and saved 0.0): as if
    every true connection were missed. n/a, and null in the JSON."""
    np.save(tmp_path / "predicted.npy", np.eye(3, dtype=np.int64))
    np.save(tmp_path / "true.npy", np.zeros((3, 3), dtype=np.int64))
    out = tmp_path / "score.json"
    capsys.readouterr()
    score_main([str(tmp_path / "predicted.npy"), str(tmp_path / "true.npy"),
                "--out_json", str(out)])
    printed = dict(line.split() for line in
                   capsys.readouterr().out.strip().splitlines())
    assert printed == {
        "true_connections_found": "n/a",
        "predicted_connections_true": "0.0000", "connections_f1": "0.0000",
        "streamlines_in_true_connections": "0.0000",
        "nb_true_connections": "0", "nb_predicted_connections": "3",
        "nb_predicted_streamlines": "3"}
    with open(out) as f:
        saved = json.load(f)
    assert saved["true_connections_found"] is None
    assert saved["predicted_connections_true"] == 0.0
    assert saved["nb_true_connections"] == 0
