"""See a subject's streamlines as the training batches hold them."""
import logging

from dwi_ml.batching.batch_loader import (
    LOADER_OPTIONS,
    add_loader_args,
    loader_options_from_args,
)
from dwi_ml.data.processing.input_spec import add_streamline_format_args
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.arg_checks import check_extension, check_int
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.io_utils.reference_options import VISUALIZE_NOISE_REFERENCE_OPTIONS
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    option_given,
    parse_script_args,
)
from dwi_ml.monitoring.augmentation_preview import (
    SHOWN_POINTS,
    choose_ids,
    load_subject_as,
    loaded_subject_group,
    preview_subject_augmentations,
    save_preview_tractogram,
    summarize,
)
from dwi_ml.training.experiment_builder import check_hdf5_groups
from dwi_ml.training.training_file import format_as_in_training

OUT_EXTENSIONS = (".trk", ".trx")
# What --experiment takes from parameters.json: (section, name).
EXPERIMENT_OPTIONS = (*(("loader", name) for name in LOADER_OPTIONS),
                      ("loader", "seed"), ("model", "step_size"),
                      ("model", "nb_points"), ("model", "compress"))

DESCRIPTION = """\
Write one subject's streamlines of a dwi_ml HDF5 file as the training's
batch loader hands them to the model, to overlay them on the stored ones
(dwiml_hdf5_extract_data.py) in a viewer and choose the augmentations: the
model's format (--step_size, --nb_points or --compress; as stored by
default), then --split_ratio, --reverse_ratio and the Gaussian noise, drawn
by the loader itself (BatchLoaderOneInput) for --seed, as batch 0 of epoch
0. The options are dwiml_train_model.py's, with its defaults, so that
without options the file shows what a default training sees: streamlines
as stored, half of them reversed, no split, no noise. --points input shows
the points where the inputs are read (--noise_gaussian_size_forward),
--points target the streamlines the loss compares to
(--noise_gaussian_size_loss). The subject may be in any split: it is loaded
as a --subset batch (validation and testing batches are only brought to
the format).
Each streamline holds, as data_per_streamline 'source_id', the index in
the group of the streamline it comes from (the two halves of a split one
share it); each point holds, as data_per_point, its displacement by the
noise in mm, 'noise_mm' (3 values) and its norm 'noise_norm_mm' (noise
comes last, so each noisy point has its clean one). A line gives the
number of streamlines in and out and the mean and largest displacement.
OUT_TRACTOGRAM is a .trk or .trx file, in the subject's space (RAS mm, on
the streamline group's grid). Every input is checked, and an existing
output refused without -f, before any work. --experiment takes the
augmentations, the seed and the model's format of a training run from its
parameters.json: what that run's training batches held (their first batch
holds other streamlines)."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("hdf5_file", metavar="HDF5", help="dwi_ml HDF5 file.")
    parser.add_argument("subject_id", metavar="SUBJECT",
                        help="Subject ID, in any split.")
    parser.add_argument("streamline_group", metavar="STREAMLINE_GROUP",
                        help="Streamline group to show.")
    parser.add_argument("out_tractogram", metavar="OUT_TRACTOGRAM",
                        help="Output .trk or .trx.")
    shown = parser.add_argument_group("Streamlines shown")
    shown.add_argument("--subset", default=Split.TRAINING.value,
                       choices=[split.value for split in Split],
                       help="Load them as a batch of this subset: only "
                            "training batches are augmented (validation and "
                            "testing ones are brought to the format).")
    ids = shown.add_mutually_exclusive_group()
    ids.add_argument("--streamline_ids", type=int, nargs="+", metavar="ID",
                     help="These streamlines of the group, in this order; "
                          "an ID given twice shows two draws of its "
                          "augmentations. Default: all of them.")
    ids.add_argument("--max_streamlines", type=int, metavar="N",
                     help="Up to N streamlines, evenly spread over the "
                          "group. Default: all of them.")
    shown.add_argument("--points", default="input", choices=list(SHOWN_POINTS),
                       help="input: the points where the model's inputs are "
                            "read; target: the streamlines of the loss.")
    add_loader_args(parser)
    add_streamline_format_args(parser.add_argument_group(
        "The model's streamline format (default: as stored)"))
    run = parser.add_argument_group("Run")
    run.add_argument("--seed", type=int, default=1234,
                     help="The loader's seed (dwiml_train_model.py's "
                          "--seed): the same seed gives the same file.")
    run.add_argument("--experiment", metavar="EXPERIMENT",
                     help="Take the augmentation options, --seed and the "
                          "format from this experiment's parameters.json "
                          "(for a model without a format of its own, the "
                          "format of its training file's streamlines); none "
                          "of them may then be given.")
    add_output_args(parser)
    return parser


AUGMENTATION_OPTIONS = ("split_ratio", "reverse_ratio",
                        "noise_gaussian_size_forward",
                        "noise_gaussian_size_loss")


def _warn_augmentations_unused(args):
    """Augmentation options typed for a validation or testing batch, which
    the loader does not augment: say so rather than show no noise."""
    typed = [f"--{name}" for name in AUGMENTATION_OPTIONS
             if name in args.options_given]
    if args.subset != Split.TRAINING.value and typed:
        logging.warning(
            "%s: not applied to a --subset %s batch (the loader augments "
            "training batches only); use --subset training to see them.",
            ", ".join(typed), args.subset)
        return
    # Each noise moves one kind of points only.
    other = {"input": ("noise_gaussian_size_loss", "target"),
             "target": ("noise_gaussian_size_forward", "input")}
    name, shown_by = other[args.points]
    if name in args.options_given:
        logging.warning(
            "--%s: not shown with --points %s (it moves the %s points "
            "only); use --points %s to see it.", name, args.points,
            "target" if args.points == "input" else "input", shown_by)


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_visualize_noise_on_streamlines.py."""
    args = parse_script_args(
        _build_parser(), argv,
        reference_options=VISUALIZE_NOISE_REFERENCE_OPTIONS)
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    check_extension(args.out_tractogram, OUT_EXTENSIONS)
    check_output_free(args.out_tractogram, args.overwrite)
    if args.experiment is not None:
        _options_from_experiment(args)
    augmentations = loader_options_from_args(args)
    _warn_augmentations_unused(args)
    streamline_format = StreamlineFormat(args.step_size, args.nb_points,
                                         args.compress)
    if args.experiment is not None:
        # Its training file's format when the model has none of its own.
        streamline_format = format_as_in_training(
            args.experiment, args.hdf5_file, streamline_format)
    check_int("--seed", args.seed, 0)
    if args.max_streamlines is not None:
        check_int("--max_streamlines", args.max_streamlines, 1)
    check_hdf5_groups(args.hdf5_file, None, args.streamline_group)

    dataset = load_subject_as(args.hdf5_file, args.subject_id,
                              args.streamline_group, args.subset)
    try:
        _, sft_data = loaded_subject_group(dataset, args.streamline_group)
        ids = choose_ids(sft_data.nb_streamlines, args.streamline_ids,
                         args.max_streamlines,
                         f"HDF5 file {args.hdf5_file}, subject "
                         f"'{args.subject_id}', group "
                         f"'{args.streamline_group}'")
        preview = preview_subject_augmentations(
            dataset, args.streamline_group, ids, augmentations,
            streamline_format, args.points, args.seed)
    finally:
        dataset.close()
    save_preview_tractogram(preview, args.out_tractogram)
    print(summarize(preview))


def _options_from_experiment(args):
    """Set the loader, seed and format options of ``args`` from
    ``--experiment``'s parameters.json, refusing any of them given."""
    defaults = _build_parser()
    given = [f"--{name}" for _, name in EXPERIMENT_OPTIONS
             if option_given(args, name, defaults.get_default(name))]
    if given:
        raise DwiMLUserError(
            f"argument {given[0]}: --experiment '{args.experiment}' gives "
            f"the augmentations, the seed and the format; expected none of "
            f"them, found {', '.join(given)}.")
    params = read_parameters(args.experiment, ("loader", "model"))
    for section, name in EXPERIMENT_OPTIONS:
        setattr(args, name, params[section].get(name))


if __name__ == "__main__":
    main()
