"""Evaluate a trained model on a subset of an HDF5 file, subject by subject.

Runs the validation loop (no augmentation, no gradients) of the experiment's
best model, or of its latest checkpoint with --use_latest_epoch, over every
streamline of the chosen subset. Prints, and saves as JSON, each subject's
losses (the total and each named loss), number of points and mean angular
error in degrees (deterministic directions against the streamlines' own
segments, measured in mm), with the model evaluated: best or latest, its
0-based epoch and whether that epoch was complete (a checkpoint written at
a stop holds a model inside an epoch). The 'all' row pools the points of
every subject (not a mean of the subjects' means): losses over the loss
points (n_points), the angle over the points with a direction to compare
(without the last point of each streamline with EOS). A model trained on
GPU evaluates on CPU. It evaluates in float32: a model trained with
--mixed_precision bf16 logged its validation loss in bfloat16, which differs
from this one by ~1e-4 relative.
The streamlines are read as the model read its training streamlines: a
model without a step size of its own was trained on its HDF5's streamlines
as stored (say, resampled to 1.5 mm at creation), and those of another HDF5
are resampled to that format. A warning says when the model's input group
was made otherwise in this file (other files, or another standardization),
and when an evaluated subject's ID is in the training split of the file
the model was trained on (as recorded in the experiment's parameters.json;
it says whether this is that same file).
The JSON also records the sha256 of the model's weights, the fingerprint
of the HDF5 file (its splits and the shapes of its data), the options and
the dwi_ml version.
"""
import os

from dwi_ml.data.hdf5.file_check import check_dwiml_hdf5
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.script_args import (
    add_experiment_group_args,
    add_model_run_args,
    add_output_args,
    check_model_run_args,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.models.model_io import load_model_of_experiment
from dwi_ml.training.evaluation import evaluate_model_on_hdf5, subject_table
from dwi_ml.training.experiment_builder import check_hdf5_groups, experiment_groups
from dwi_ml.training.training_file import (
    grids_unlike_training,
    training_split_subjects,
    use_training_streamline_format,
    warn_if_input_prepared_differently,
)


def _build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("experiment_path", help="The experiment folder.")
    parser.add_argument("hdf5_file", help="HDF5 file holding the subset.")
    group = parser.add_argument_group("Evaluation")
    group.add_argument("--subset", default="testing",
                       choices=("training", "validation", "testing"),
                       help="Split of the HDF5 file whose subjects are "
                            "evaluated.")
    add_model_run_args(group)
    add_experiment_group_args(group, "to evaluate")
    group.add_argument("--out", help="Output .json file (default: EXPERIMENT/"
                       "evaluation_SUBSET_best|latest.json).")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_evaluate_model.py."""
    args = parse_script_args(_build_parser(), argv)
    check_model_run_args(args)
    params = read_parameters(args.experiment_path)
    model, provenance = load_model_of_experiment(
        args.experiment_path, args.use_latest_epoch, args.device,
        with_provenance=True)
    input_group, streamline_group = experiment_groups(
        params, args.experiment_path, args.input_group, args.streamline_group)
    check_hdf5_groups(args.hdf5_file, input_group, streamline_group)
    warn_if_input_prepared_differently(model, args.experiment_path, args.hdf5_file,
                                       input_group)
    use_training_streamline_format(model, args.experiment_path,
                                   args.hdf5_file)
    out = args.out or os.path.join(
        args.experiment_path,
        f"evaluation_{args.subset}_{provenance['model']}.json")
    check_output_free(out, args.overwrite,
                      extensions=(".json",))

    if not check_dwiml_hdf5(args.hdf5_file)[args.subset]:
        raise DwiMLUserError(
            f"--subset {args.subset}: '{args.hdf5_file}' has no "
            f"{args.subset} subject.")
    fingerprint = compute_hdf5_fingerprint(args.hdf5_file)
    grids_unlike_training(args.experiment_path,
                          fingerprint["splits"][args.subset], input_group,
                          fingerprint)
    in_training_split = training_split_subjects(
        args.experiment_path, fingerprint["splits"][args.subset],
        args.hdf5_file, fingerprint)
    results = evaluate_model_on_hdf5(model, args.hdf5_file, args.subset,
                                     input_group, streamline_group,
                                     args.batch_size, args.device)
    record = run_record(args, leave_out=(
        "experiment_path", "hdf5_file", "subset", "out"))
    options = {**record["options"],
               # The groups used, the experiment's when not given.
               "input_group": input_group,
               "streamline_group": streamline_group}
    write_json_atomic(out, {**provenance, "subset": args.subset,
                            "hdf5_file": os.path.abspath(args.hdf5_file),
                            "hdf5_fingerprint": fingerprint,
                            "subjects_in_training_split": in_training_split,
                            "options": options, "argv": record["argv"],
                            "results": results})
    print("\n".join(subject_table(
        results, [key for key in results["all"] if key != "n_points"])))
    stopped = ", stopped inside it" if provenance["epoch_complete"] is False \
        else ""
    print(f"Evaluated the {provenance['model']} model (epoch "
          f"{provenance['epoch']}{stopped}). Saved to {out}")


if __name__ == "__main__":
    main()
