"""Run the whole dwi_ml job on a synthetic example, in under a minute on CPU.

Steps: make the synthetic subjects, build the HDF5 (streamlines resampled
to 2 mm steps), load it and print a summary, train a small Learn2track model
(with validation, best model and checkpoints), resume it for more epochs,
plot its logs to PNG, track the validation subject into a .trk, then print
where each output went and the final validation loss and angular error.
Every step runs the same code as the individual scripts.
"""
import os

import numpy as np
from dipy.io.streamline import load_tractogram

from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli import visualize_logs
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import train_from_args
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.arg_checks import check_int_options
from dwi_ml.io_utils.errors import DwiMLUserError, count_of, script_entry_point
from dwi_ml.io_utils.experiment_layout import best_model_dir
from dwi_ml.io_utils.output_folders import (
    check_output_folder,
    reset_output_folder,
    seal_output_folder,
)
from dwi_ml.io_utils.run_paths import script_run
from dwi_ml.io_utils.script_args import (
    add_output_args,
    make_parser,
    parse_script_args,
)
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.training.copy_previous import copy_previous_losses_on_hdf5
from dwi_ml.training.evaluation import evaluate_model_on_hdf5


def _build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("out_folder", help="Output folder: new or empty, or "
                        "a demo output to replace with -f.")
    parser.add_argument("--nb_streamlines", type=int, default=1000,
                        help="Streamlines per synthetic subject.")
    parser.add_argument("--epochs", type=int, nargs=2, default=(4, 8),
                        metavar=("FIRST", "TOTAL"),
                        help="Epochs of the first run, then in all after "
                             "the resume.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the synthetic data, the training and "
                             "the tracking.")
    add_output_args(parser)
    return parser


def summarize_dataset(hdf5_file):
    """Lines describing the dataset as MultiSubjectDataset loads it."""
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data()
    lines = [f"  volume groups {dataset.volume_groups} with features "
             f"{dataset.nb_features}; streamline groups "
             f"{dataset.streamline_groups}"]
    for subset in (dataset.training_set, dataset.validation_set,
                   dataset.testing_set):
        for subj_idx, subject in enumerate(subset.subjects):
            lengths = subset.get_lengths(subj_idx, 0)
            lengths_mm = subset.get_lengths_mm(subj_idx, 0)
            lines.append(
                f"  {subset.split:10s} {subject}: {len(lengths)} streamlines, "
                f"{int(lengths.sum())} points, mean length "
                f"{float(np.mean(lengths_mm)):.1f} mm")
    dataset.close()
    return lines


def demo_training_args(experiments, hdf5_file, max_epochs, seed):
    """The demo's ``dwiml_train_model.py`` arguments (experiment "demo").

    Its validation loss jumps from epoch to epoch whatever the learning
    rate, schedule or batch size: see ``--reverse_ratio`` in
    docs/training.md and ``bench/bench_demo_validation.py``.
    """
    return [experiments, "demo", hdf5_file, "input", "streamlines",
            "--step_size", "2.0", "--nb_previous_dirs", "2",
            "--rnn_layer_sizes", "64", "--batch_size_training", "25",
            "--learning_rate", "0.005", "--max_epochs", str(max_epochs),
            "--seed", str(seed), "-f"]


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_run_demo.py."""
    args = parse_script_args(_build_parser(), argv)
    # The synthetic subjects have 3 bundles of at least one streamline.
    check_int_options(args, {"nb_streamlines": 3, "epochs": 1, "seed": 0})
    first_epochs, total_epochs = args.epochs
    if not 1 <= first_epochs < total_epochs:
        # The resume step needs epochs left to train.
        raise DwiMLUserError(
            f"--epochs: expected FIRST >= 1 and TOTAL > FIRST, got "
            f"{first_epochs} {total_epochs} (FIRST < TOTAL leaves epochs "
            "to resume).")
    check_output_folder(args.out_folder, "demo_output", args.overwrite)
    reset_output_folder(args.out_folder, "demo_output")

    # Each step is a script run of its own: one step's output is the
    # next one's input.
    print("1. Synthetic subjects")
    with script_run():
        paths = make_synthetic_dataset(
            os.path.join(args.out_folder, "synthetic"), nb_subjects=3,
            nb_streamlines=args.nb_streamlines, seed=args.seed, overwrite=True)
    print(f"   -> {paths.out_folder}")

    print("2. HDF5 dataset")
    hdf5_file = os.path.join(args.out_folder, "dataset.hdf5")
    with script_run():
        create_hdf5_dataset(
            os.path.join(paths.out_folder, "dwi_ml_ready"), hdf5_file,
            paths.config, paths.splits["training"],
            paths.splits["validation"], paths.splits["testing"],
            step_size=2.0, overwrite=True)
    print(f"   -> {hdf5_file}")
    print("\n".join(summarize_dataset(hdf5_file)))

    print(f"3. Training for {count_of(first_epochs, 'epoch')}")
    experiments = os.path.join(args.out_folder, "experiments")
    os.makedirs(experiments, exist_ok=True)
    train_args = train_parser().parse_args(demo_training_args(
        experiments, hdf5_file, first_epochs, args.seed) + ["-v", args.verbose])
    with script_run():
        train_from_args(train_args)
    experiment_dir = os.path.join(experiments, "demo")

    print(f"4. Resuming up to {total_epochs} epochs")
    resume_cli.main([experiments, "demo", "--new_max_epochs",
                     str(total_epochs), "-v", args.verbose])

    print("5. Plotting the logs")
    plot_prefix = os.path.join(args.out_folder, "logs_plot")
    visualize_logs.main([experiment_dir, "--out", plot_prefix, "-f",
                         "-v", args.verbose])

    print("6. Tracking the validation subject")
    tractogram = os.path.join(args.out_folder, "tracking_subj-02.trk")
    track_cli.main([experiment_dir, hdf5_file, paths.splits["validation"][0],
                    "input", tractogram, "--tracking_mask_group", "wm_mask",
                    "--npv", "2", "--seed", str(args.seed), "-f",
                    "-v", args.verbose])
    nb_tracked = len(load_tractogram(tractogram, "same",
                                     bbox_valid_check=True).streamlines)
    seal_output_folder(args.out_folder)

    valid_loss = np.load(os.path.join(experiment_dir, "logs", "valid_loss.npy"))
    best = load_model_from_params_and_state(best_model_dir(experiment_dir))
    angle = evaluate_model_on_hdf5(
        best, hdf5_file, "validation", "input",
        "streamlines")["all"]["angular_error_deg"]
    rule = copy_previous_losses_on_hdf5(
        hdf5_file, "validation", "streamlines", best.direction_getter,
        best.input_spec.streamline_format)["all"]["loss"]
    print("Outputs:")
    print(f"  synthetic data : {paths.out_folder}")
    print(f"  HDF5           : {hdf5_file}")
    print(f"  experiment     : {experiment_dir}")
    print(f"  logs plot      : {plot_prefix}.png")
    print(f"  tractogram     : {tractogram} ({nb_tracked} streamlines)")
    print(f"Final validation loss {valid_loss[-1]:.4f} (epoch 0: "
          f"{valid_loss[0]:.4f}; copying the previous direction: "
          f"{rule:.4f}); mean angular error of the best model on the "
          f"validation subject: {angle:.1f} degrees.")


if __name__ == "__main__":
    main()
