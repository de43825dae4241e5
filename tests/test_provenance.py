"""What the outputs record of how they were made: the tracking sidecar, the
score JSON's inputs and options, the evaluation's model and HDF5 file, and
the warning on subjects of the model's training split."""
import json
import os
import shutil

import h5py
import pytest
from dipy.io.streamline import load_tractogram
from training_data import make_trained_experiment

from dwi_ml import __version__
from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_score_tractogram import main as score_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.io_utils.manifest import file_sha256, read_manifest
from dwi_ml.io_utils.provenance import PROVENANCE_KIND, read_provenance

TRAINING, TESTING = "subj-01", "subj-03"
WARNING = "ID matches the training split of the file the model was trained on"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """1 training (subj-01), 1 validation, 1 testing subject (subj-03)."""
    return make_trained_experiment(tmp_path_factory.mktemp("provenance"))


def _subject_file(data, subject, name):
    return os.path.join(str(data["folder"]), "synthetic", "dwi_ml_ready",
                        subject, name)


def _track(data, out, subject=TESTING, *options):
    track_main([data["experiment"], data["hdf5"], subject, "input", str(out),
                "--tracking_mask_group", "wm_mask", "--nt", "30",
                "-v", "WARNING", *options])


def _refused(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_tracking_sidecar_records_the_model_and_every_option(data, tmp_path,
                                                             capsys):
    out = tmp_path / "tracked.trk"
    _track(data, out, TESTING, "--seed", "7", "--algo", "det", "--theta",
           "40", "--step_size", "1.5")
    assert WARNING not in capsys.readouterr().err
    experiment = data["experiment"]
    best = json.loads(open(os.path.join(experiment, "best_model",
                                        "best_epoch.json")).read())
    nb_streamlines = len(load_tractogram(str(out), "same"))
    expected = {
        "kind": PROVENANCE_KIND, "output": "tracked.trk",
        "output_sha256": file_sha256(str(out)),
        "experiment": os.path.abspath(experiment), "model": "best",
        "epoch": best["epoch"], "epoch_complete": True,
        "weights_sha256": read_manifest(os.path.join(
            experiment, "best_model"))["model_state.pt"],
        "dwi_ml_version": __version__,
        "inputs": {"hdf5_file": os.path.abspath(data["hdf5"]),
                   "subject_id": TESTING},
        "options": {"algo": "det", "batch_size": 1000, "compress_th": None,
                    "device": "cpu", "discard_last_point": True,
                    "eos_stop": None, "input_group": "input",
                    "mask_interp": "trilinear", "max_invalid_nb_points": 0,
                    "max_length": 300.0, "min_length": 10.0, "npv": None,
                    "nt": 30, "seed": 7, "seeding_mask_group": None,
                    "step_size": 1.5, "theta": 40.0,
                    "track_forward_only": False,
                    "tracking_mask_group": "wm_mask",
                    "use_latest_epoch": False},
        "used": {"eos_threshold": None, "npv": None,
                 "seeding_mask_group": "wm_mask", "step_size_mm": 1.5},
        "argv": [data["experiment"], data["hdf5"], TESTING, "input",
                 str(out), "--tracking_mask_group", "wm_mask", "--nt", "30",
                 "-v", "WARNING", "--seed", "7", "--algo", "det",
                 "--theta", "40", "--step_size", "1.5"],
        "subject_in_training_split": False,
        "nb_seeds": 30, "nb_streamlines": nb_streamlines}
    with open(f"{out}.json") as f:
        assert json.load(f) == expected
    assert read_provenance(str(out)) == expected

    # The checkpoint's model: its own epoch and weights (its manifest's).
    latest = tmp_path / "latest.trx"
    _track(data, latest, TESTING, "--use_latest_epoch")
    record = read_provenance(str(latest))
    assert (record["model"], record["epoch"], record["epoch_complete"]) == \
        ("latest", 0, True)
    assert record["weights_sha256"] == read_manifest(os.path.join(
        experiment, "checkpoint"))["model/model_state.pt"]


def test_tracking_a_training_subject_is_warned(data, tmp_path, capsys):
    out = tmp_path / "training.tck"
    _track(data, out, TRAINING)
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if WARNING in line]
    assert warnings == [
        f"WARNING: Subject {TRAINING} of {data['hdf5']}: {WARNING}, and this "
        "is that same file (same fingerprint): the model learned from it; "
        "results on it are not those of an unseen subject."]
    assert read_provenance(str(out))["subject_in_training_split"] is True


def test_the_sidecar_is_replaced_with_f_only_when_ours(data, tmp_path,
                                                       capsys):
    out = tmp_path / "out.trk"
    sidecar = tmp_path / "out.trk.json"
    sidecar.write_text('{"mine": 1}')
    # Checked before any work, even without the tractogram.
    assert "provenance sidecar '" in _refused(capsys, track_main, [
        data["experiment"], data["hdf5"], TESTING, "input", str(out),
        "--tracking_mask_group", "wm_mask"])
    assert "already exists; use -f" in _refused(capsys, track_main, [
        data["experiment"], data["hdf5"], TESTING, "input", str(out),
        "--tracking_mask_group", "wm_mask"])
    message = _refused(capsys, track_main, [
        data["experiment"], data["hdf5"], TESTING, "input", str(out),
        "--tracking_mask_group", "wm_mask", "-f"])
    assert "is not a dwi_ml provenance file" in message
    assert sidecar.read_text() == '{"mine": 1}' and not out.exists()

    sidecar.unlink()
    _track(data, out, TESTING, "--seed", "1")
    os.remove(out)
    # Our sidecar, its tractogram gone: refused without -f, replaced with.
    assert "provenance sidecar" in _refused(capsys, track_main, [
        data["experiment"], data["hdf5"], TESTING, "input", str(out),
        "--tracking_mask_group", "wm_mask"])
    _track(data, out, TESTING, "--seed", "2", "-f")
    assert read_provenance(str(out))["options"]["seed"] == 2
    assert sorted(name for name in os.listdir(tmp_path)
                  if name.startswith(".")) == []


def test_a_sidecar_of_a_replaced_tractogram_is_not_read(data, tmp_path):
    out = tmp_path / "out.trk"
    _track(data, out)
    shutil.copy(_subject_file(data, TESTING, "bundles/bundle_01.trk"), out)
    assert read_provenance(str(out)) is None


def test_score_json_records_inputs_options_and_int_counts(data, tmp_path):
    tracked = tmp_path / "tracked.trk"
    _track(data, tracked, TESTING, "--nt", "100")
    reference = _subject_file(data, TESTING, "bundles/bundle_01.trk")
    mask = _subject_file(data, TESTING, "wm_mask.nii.gz")
    saved = {}
    for max_angle in ("30", "10"):
        out = tmp_path / f"scores_{max_angle}.json"
        score_main([str(tracked), reference, mask, "--max_angle", max_angle,
                    "--out_json", str(out), "-v", "WARNING"])
        text = out.read_text()
        saved[max_angle] = json.loads(text)
        # Counts as integers: "nb_tracked": 42, not 42.0.
        for key in ("nb_tracked", "nb_reference", "nb_tracked_points"):
            assert type(saved[max_angle][key]) is int
            assert f'"{key}": {saved[max_angle][key]},' in text
    scores = saved["10"]
    assert scores["inputs"] == {
        "in_tractogram": str(tracked), "reference_tractogram": reference,
        "mask_or_volume": mask}
    assert scores["options"] == {
        "bundle_key": None, "max_angle": 10.0, "min_share_in_volume": 0.5,
        "distances_vox": [1.0, 2.0], "direction_max_distance_vox": 2.0,
        "max_step_vox": 0.5}
    assert scores["dwi_ml_version"] == __version__
    assert saved["30"]["options"]["max_angle"] == 30.0
    assert scores["nb_tracked"] == len(load_tractogram(str(tracked), "same"))


def _evaluate(capsys, data, out, *options, hdf5_file=None):
    evaluate_main([data["experiment"], hdf5_file or data["hdf5"], "--out",
                   str(out), "-v", "WARNING", *options])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if WARNING in line]
    with open(out) as f:
        return json.load(f), warnings


def test_evaluation_warns_on_training_subjects_and_records_the_model(
        data, tmp_path, capsys):
    saved, warnings = _evaluate(capsys, data, tmp_path / "testing.json")
    assert warnings == [] and saved["subjects_in_training_split"] == []
    assert saved["hdf5_fingerprint"] == compute_hdf5_fingerprint(data["hdf5"])
    assert saved["weights_sha256"] == read_manifest(os.path.join(
        data["experiment"], "best_model"))["model_state.pt"]
    assert saved["dwi_ml_version"] == __version__
    assert saved["options"] == {"batch_size": 200, "device": "cpu",
                                "input_group": "input",
                                "streamline_group": "streamlines",
                                "use_latest_epoch": False}
    assert saved["argv"] == [data["experiment"], data["hdf5"], "--out",
                             str(tmp_path / "testing.json"), "-v", "WARNING"]

    saved, warnings = _evaluate(capsys, data, tmp_path / "training.json",
                                "--subset", "training")
    assert warnings == [
        f"WARNING: Subject {TRAINING} of {data['hdf5']}: {WARNING}, and this "
        "is that same file (same fingerprint): the model learned from it; "
        "results on it are not those of an unseen subject."]
    assert saved["subjects_in_training_split"] == [TRAINING]


def test_a_training_id_in_another_file_says_it_may_be_another_subject(
        data, tmp_path, capsys):
    other = str(tmp_path / "other.hdf5")
    shutil.copy(data["hdf5"], other)
    with h5py.File(other, "a") as hdf:
        hdf.attrs["testing_subjs"] = [TRAINING, TESTING]
    saved, warnings = _evaluate(capsys, data, tmp_path / "other.json",
                                hdf5_file=other)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"WARNING: Subject {TRAINING} of {other}: {WARNING}, not this one "
        "(splits/testing: saved ['subj-03'], found ['subj-01', 'subj-03']); "
        "IDs may be reused across files, but if it is the same subject, "
        "results on it are not those of an unseen subject.")
    assert saved["subjects_in_training_split"] == [TRAINING]
