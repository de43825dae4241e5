#!/usr/bin/env python3
"""Tracking validation: its cost, and whether it picks better models.

``cost OUT``: the bundled example of ``dwiml_run_demo.py`` (3 synthetic
subjects x 1000 streamlines, HDF5 at 2 mm, its Learn2track model), trained
2 epochs (``--nb_epochs``) with whole-subject tracking validation from
1000 seeds, then as many with generation validation; prints the epoch's
training and validation time against the tracking time, from the run's
own logs (wall), then the same in CPU time of this process (steadier on a
shared machine). With ``--nb_streamlines N``, N streamlines a subject
instead of 1000: the same 1000 seeds (or streamlines) tracked against a
longer epoch.

``stages OUT``: the same example and runs as ``cost``; after training,
the callback's tracking pass is run ``--repeats`` more times with each
stage's CPU time taken (its function wrapped while the clock is on): the
model's step (and within it the RNN cells), the directions, the checks of
the next points (with a tracking mask they read the next inputs too), the
inputs read alone (without a mask, or at the first steps), the hidden
states' selection, the scoring. Also a fit of each step's CPU time as a
fixed cost plus a cost per streamline row.

``proof OUT``: synthetic subjects with bundle labels (5 subjects: 3
training, 1 validation, 1 testing), one Learn2track run with
``--tracking_validation_every 1`` (whole subject, 1000 seeds, labels); the
model of every epoch is kept. The testing subject is tracked with each
epoch's model (``dwiml_track_from_model.py``) and scored against its
labelled streamlines (``dwiml_score_tractogram.py``). Prints, per epoch, the
validation loss, the validation tracking F1 and VC, and the testing
subject's scores, and which epoch each criterion (valid_loss, tracking_f1,
tracking_vc) picks.
"""
import argparse
import collections
import functools
import json
import os
import sys
import time

import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import save_tractogram

from dwi_ml.cli import dwiml_score_tractogram as score_cli
from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.experiment_layout import BEST_MODEL_DIR
from dwi_ml.io_utils.run_paths import script_run
from dwi_ml.models.direction_getter_model import DirectionGetterModel
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.stacked_rnn import StackedRNN
from dwi_ml.tracking.next_points import NextPointChecks
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.tracking_validation import TrackingValidationCallback
from dwi_ml.training.callbacks import Callback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests"))
from bench_out_folder import prepare_out  # noqa: E402 (bench/, on the path)
from tracking_validation_data import (  # noqa: E402
    BUNDLE_KEY,
    label_bundles,
    make_labelled_hdf5,
)

# The model of dwiml_run_demo.py.
DEMO_MODEL = ["--step_size", "2.0", "--nb_previous_dirs", "2",
              "--rnn_layer_sizes", "64", "--batch_size_training", "25",
              "--learning_rate", "0.005", "--reverse_ratio", "0.5"]
WHOLE_SUBJECT = ["--tracking_validation_mode", "whole_subject",
                 "--tracking_validation_tracking_mask_group", "wm_mask",
                 "--tracking_validation_nb_seeds", "1000"]
GENERATION = ["--tracking_validation_nb_streamlines", "1000"]
# What the three modes write in OUT (-f removes these only).
OWN_ENTRIES = ("synthetic", "dataset.hdf5", "labelled.hdf5", "experiments",
               "epochs", "testing_reference.trk")


class SaveEveryEpoch(Callback):
    """Keep each epoch's model as ``FOLDER/epoch_K/best_model``, a folder
    ``dwiml_track_from_model.py`` takes as an experiment."""

    def __init__(self, folder):
        self.folder = folder

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        path = os.path.join(self.folder, f"epoch_{epoch}", BEST_MODEL_DIR)
        os.makedirs(path)
        trainer.model.save_params_and_state(path)


class CpuClock(Callback):
    """CPU time (this process) of each epoch, and of its tracking
    validation (``TrackingValidationCallback.track_and_score``, timed by
    wrapping it while the clock is on)."""

    def __init__(self):
        self.epochs, self.tracking = [], []
        self._start = None
        self._original = TrackingValidationCallback.track_and_score

    def on_train_start(self, trainer):
        clock = self

        def timed(callback, trainer):
            start = time.process_time()
            try:
                return clock._original(callback, trainer)
            finally:
                clock.tracking[-1] += time.process_time() - start
        TrackingValidationCallback.track_and_score = timed

    def on_train_end(self, trainer):
        TrackingValidationCallback.track_and_score = self._original

    def on_epoch_start(self, trainer, epoch):
        self.tracking.append(0.0)
        self._start = time.process_time()

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        self.epochs.append(time.process_time() - self._start)


# Stages of a tracking pass: (class, method, label).
STAGES = (
    (TrackingValidationCallback, "track_and_score", "tracking pass"),
    (BatchedTracker, "_propagate", "tracker's steps"),
    (Learn2TrackModel, "forward_step", "model step"),
    (StackedRNN, "forward_step", "  of which RNN cells"),
    (DirectionGetterModel, "get_tracking_directions", "directions"),
    (NextPointChecks, "_check_next_points", "next points' checks"),
    (BatchedTracker, "_interpolate_inputs", "inputs read alone"),
    (Learn2TrackModel, "select_hidden_states", "hidden states' selection"),
    (TrackingValidationCallback, "_score_subject", "scoring"),
)


class KeepTrainer(Callback):
    """Keeps the trainer, to track again after training."""

    def on_train_end(self, trainer):
        self.trainer = trainer


def _clock_stages(times, steps):
    """Wrap each stage's method to add its CPU time to ``times[label]``,
    and record (CPU time, rows) at each model step in ``steps``; return
    the original methods."""
    def timed(function, label):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.process_time()
            if label == "model step":
                steps.append((start, len(args[1])))
            try:
                return function(*args, **kwargs)
            finally:
                times[label] += time.process_time() - start
        return wrapper
    originals = {}
    for owner, name, label in STAGES:
        function = owner.__dict__[name]
        originals[owner, name] = function
        setattr(owner, name, staticmethod(timed(function.__func__, label))
                if isinstance(function, staticmethod)
                else timed(function, label))
    return originals


def stages(out, repeats):
    """CPU time of each stage of a tracking pass, both modes."""
    hdf5_file = _demo_hdf5(out)
    for name, extra in (("whole_subject", WHOLE_SUBJECT),
                        ("generation", GENERATION)):
        keep = KeepTrainer()
        _train(os.path.join(out, "experiments"), name, hdf5_file,
               ["--tracking_validation_every", "1", "--max_epochs", "2",
                *extra], callbacks=[keep])
        callback = next(c for c in keep.trainer.callbacks.callbacks
                        if isinstance(c, TrackingValidationCallback))
        times, steps, passes = collections.defaultdict(float), [], []
        originals = _clock_stages(times, steps)
        try:
            for _ in range(repeats + 1):  # the first one warms up
                times.clear()
                steps.clear()
                callback.track_and_score(keep.trainer)
                passes.append(dict(times))
        finally:
            for (owner, method), function in originals.items():
                setattr(owner, method, function)
        for _, _, label in STAGES:
            values = [times.get(label, 0.0) * 1e3 for times in passes[1:]]
            print(f"{name}: {label:26s} {min(values):6.1f} - "
                  f"{max(values):6.1f} ms CPU")
        starts, rows = np.array(steps).T
        durations = np.diff(starts)
        # Not the gap between the two halves (the backward one's setup).
        regular = durations < 5 * np.median(durations)
        fixed, per_row = np.linalg.lstsq(
            np.stack([np.ones(regular.sum()), rows[:-1][regular]], 1),
            durations[regular], rcond=None)[0]
        print(f"{name}: {len(rows)} steps, {int(rows.sum())} rows; a step "
              f"{fixed * 1e3:.2f} ms + {per_row * 1e6:.2f} us a row (fit, "
              "last pass)")


def _train(experiments, name, hdf5_file, extra, callbacks=()):
    os.makedirs(experiments, exist_ok=True)
    args = build_parser().parse_args([experiments, name, hdf5_file, "input",
                                      "streamlines", *DEMO_MODEL, *extra,
                                      "-f", "-v", "WARNING"])
    cpu, wall = time.process_time(), time.perf_counter()
    with script_run():   # The HDF5 was this run's output, is its input here.
        train_from_args(args, callbacks=callbacks)
    print(f"{name}: {time.process_time() - cpu:.0f} s CPU, "
          f"{time.perf_counter() - wall:.0f} s wall")
    logs_dir = os.path.join(experiments, name, "logs")
    return {f[:-4]: np.load(os.path.join(logs_dir, f))
            for f in os.listdir(logs_dir)}


def _demo_hdf5(out, nb_streamlines=1000):
    """The bundled example's HDF5 (3 subjects x 1000 streamlines, 2 mm),
    or with ``nb_streamlines`` a subject."""
    paths = make_synthetic_dataset(os.path.join(out, "synthetic"),
                                   nb_subjects=3,
                                   nb_streamlines=nb_streamlines, seed=0,
                                   overwrite=True)
    hdf5_file = os.path.join(out, "dataset.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, paths.splits["training"],
                        paths.splits["validation"], paths.splits["testing"],
                        step_size=2.0, overwrite=True)
    return hdf5_file


def cost(out, nb_streamlines=1000, nb_epochs=2):
    """Tracking time vs one epoch on the bundled example (or its data
    with ``nb_streamlines`` a subject: the same 1000 seeds against a
    longer epoch)."""
    hdf5_file = _demo_hdf5(out, nb_streamlines)
    experiments = os.path.join(out, "experiments")
    for name, extra in (("whole_subject", WHOLE_SUBJECT),
                        ("generation", GENERATION)):
        clock = CpuClock()
        logs = _train(experiments, name, hdf5_file,
                      ["--tracking_validation_every", "1", "--max_epochs",
                       str(nb_epochs), *extra], callbacks=[clock])
        epoch = logs["train_time"] + logs["valid_time"]
        for k in range(nb_epochs):
            print(f"{name} epoch {k}: train {logs['train_time'][k]:.2f} s, "
                  f"valid {logs['valid_time'][k]:.2f} s, tracking "
                  f"{logs['tracking_time'][k]:.2f} s "
                  f"({logs['tracking_time'][k] / epoch[k]:.0%} of train + "
                  "valid)")
            rest = clock.epochs[k] - clock.tracking[k]
            print(f"{name} epoch {k}, CPU: epoch without tracking "
                  f"{rest:.2f} s, tracking {clock.tracking[k]:.2f} s "
                  f"({clock.tracking[k] / rest:.0%})")


def _labelled_reference(subject_paths, out_path):
    streamlines, labels = label_bundles(subject_paths)
    save_tractogram(StatefulTractogram(
        streamlines, subject_paths.dwi, Space.VOX, origin=Origin.TRACKVIS,
        data_per_streamline={BUNDLE_KEY: labels[:, None].astype(np.float32)}),
        out_path, bbox_valid_check=False)


def proof(out, nb_epochs):
    """Per epoch: valid loss, validation F1/VC, testing subject's scores."""
    hdf5_file, paths = make_labelled_hdf5(
        out, nb_streamlines=1000, seed=0, step_size=2.0, nb_subjects=5)
    testing = paths.splits["testing"][0]
    subject_paths = paths.subjects[testing]
    reference = os.path.join(out, "testing_reference.trk")
    _labelled_reference(subject_paths, reference)
    experiments = os.path.join(out, "experiments")
    epochs_folder = os.path.join(out, "epochs")
    logs = _train(experiments, "proof", hdf5_file, [
        "--tracking_validation_every", "1", "--max_epochs", str(nb_epochs),
        "--tracking_validation_bundle_key", BUNDLE_KEY,
        "--best_model_metric", "tracking_f1", *WHOLE_SUBJECT],
        callbacks=[SaveEveryEpoch(epochs_folder)])
    rows = []
    for epoch in range(nb_epochs):
        folder = os.path.join(epochs_folder, f"epoch_{epoch}")
        tractogram = os.path.join(folder, "testing.trk")
        track_cli.main([folder, hdf5_file, testing, "input", tractogram,
                        "--tracking_mask_group", "wm_mask", "--npv", "2",
                        "-v", "WARNING"])
        scores_path = os.path.join(folder, "testing_scores.json")
        score_cli.main([tractogram, reference, subject_paths.wm_mask,
                        "--bundle_key", BUNDLE_KEY, "--out_json", scores_path,
                        "-v", "WARNING"])
        with open(scores_path) as f:
            scores = json.load(f)
        rows.append((epoch, logs["valid_loss"][epoch],
                     logs["tracking_f1"][epoch], logs["tracking_vc"][epoch],
                     scores["mean_F1"], scores["VC"], scores["IC"],
                     scores["points_within_1_vox"], scores["nb_tracked"]))
    print("| epoch | valid loss | valid F1 | valid VC | test F1 | test VC | "
          "test IC | test points <= 1 vox | test streamlines |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {:.4f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | "
              "{:.3f} | {:.0f} |".format(*row))
    for metric, pick in (("valid_loss", np.argmin), ("tracking_f1", np.argmax),
                         ("tracking_vc", np.argmax)):
        epoch = int(pick(logs[metric]))
        print(f"best by {metric}: epoch {epoch}, testing F1 "
              f"{rows[epoch][4]:.3f}, VC {rows[epoch][5]:.3f}, IC "
              f"{rows[epoch][6]:.3f}")

@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=("cost", "stages", "proof"))
    parser.add_argument("out", help="Output folder: new or empty, or one "
                                    "this script wrote, replaced with -f.")
    parser.add_argument("--nb_epochs", type=int,
                        help="Epochs to train (default: cost 2, proof 8).")
    parser.add_argument("--repeats", type=int, default=4,
                        help="stages: tracking passes timed after a first "
                             "one (default 4).")
    parser.add_argument("--nb_streamlines", type=int, default=1000,
                        help="cost: streamlines a subject (default 1000: "
                             "the bundled example; more makes its epoch "
                             "longer, the tracking the same).")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Replace what this script wrote in OUT.")
    args = parser.parse_args(argv)
    prepare_out(args.out, args.overwrite, OWN_ENTRIES)
    if args.what == "cost":
        cost(args.out, args.nb_streamlines, args.nb_epochs or 2)
    elif args.what == "stages":
        stages(args.out, args.repeats)
    else:
        proof(args.out, args.nb_epochs or 8)


if __name__ == "__main__":
    main()
