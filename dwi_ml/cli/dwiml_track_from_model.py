"""Track a subject of an HDF5 file with a trained model."""
import argparse
import logging
import math
import sys

import numpy as np
import torch

from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.data.packed import packed_arrays
from dwi_ml.data.processing.resampling import compress
from dwi_ml.io_utils.arg_checks import (
    check_device,
    check_seed,
    extension_of,
)
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.provenance import (
    check_provenance_free,
    provenance_path,
    remove_provenance,
    run_record,
    write_provenance,
)
from dwi_ml.io_utils.reference_options import TRACK_REFERENCE_OPTIONS
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
    progress_bars_disabled,
    translate_reference_options,
)
from dwi_ml.io_utils.tractogram_files import (
    TRACTOGRAM_EXTENSIONS,
    check_tractogram_extension,
)
from dwi_ml.models.direction_getters.base import TRACKING_ALGOS
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.seeding import MASK_THRESHOLD, make_seeds
from dwi_ml.tracking.stopping import (
    DEFAULT_MAX_ANGLE_DEG,
    DEFAULT_MAX_LENGTH_MM,
    DEFAULT_MIN_LENGTH_MM,
    MASK_INTERPOLATIONS,
    StopReason,
    TrackingMask,
    default_eos_threshold,
    eos_stop_is_valid,
    eos_stop_value,
    keep_by_length,
)
from dwi_ml.tracking.tracker_args import check_tracking_model
from dwi_ml.tracking.tracking_io import (
    load_experiment_model,
    load_subject_volumes,
    save_tractogram_with_seeds,
)
from dwi_ml.tracking.training_facts import (
    choose_step_size,
    warn_if_not_trained_backward,
)
from dwi_ml.training.experiment_builder import check_model_input_features
from dwi_ml.training.training_file import (
    grids_unlike_training,
    training_split_subjects,
    warn_if_input_prepared_differently,
)

DESCRIPTION = """\
Track one subject of a dwi_ml HDF5 file with the model of an experiment
(its best model, or its latest epoch with --use_latest_epoch). Seeds are
drawn uniformly in the voxels of the seeding mask group (--npv per voxel or
--nt in all). Many streamlines are tracked at once, on CPU or GPU: at each
step the input group is interpolated (with the model's neighbourhood) at
every streamline's last point and one model call gives every next
direction, a step of --step_size mm. A streamline stops when its next point
leaves the volume or the tracking mask group (value < 0.5, read as
--mask_interp; --max_invalid_nb_points such points are tolerated first, the
last one is kept with --no-discard_last_point), turns by more than --theta
degrees, reaches --max_length mm or, for models with an end-of-streamline
(EOS) output, when its probability is above --eos_stop (or, with
--eos_stop max, when EOS is the most likely class). Unless
--track_forward_only, each streamline is then tracked backward from its
seed, the model first being fed the reversed forward half so that its
memory is the same as if it had tracked the whole streamline (as in
Learn2track). Streamlines of --min_length to --max_length mm are saved in
the subject's space (the input group's affine and shape), compressed with
--compress_th, with their seeds as data_per_streamline 'seeds', in RAS mm
like the streamlines as nibabel and dipy load them (a .tck file cannot hold
them). A Transformer model takes at most its max_len steps per streamline:
a --max_length above max_len x the step size is refused. Every input is
checked before any tracking.
Beside the tractogram, OUT_TRACTOGRAM.json (e.g. subj.trk.json) records
how it was made: the experiment, its best or latest model, that model's
epoch and the sha256 of its weights, the HDF5 file and subject, every
option and the values used (step size, EOS threshold...), the dwi_ml
version and the sha256 of the tractogram. It is replaced with -f only when
dwi_ml wrote it. A warning says when the subject's ID is in the training
split of the file the model was trained on."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("experiment_path", help="The experiment folder.")
    parser.add_argument("hdf5_file", help="dwi_ml HDF5 file.")
    parser.add_argument("subject_id", help="Subject to track, in any split.")
    parser.add_argument("input_group",
                        help="Volume group the model takes as input.")
    parser.add_argument("out_tractogram", help="Output .trk, .tck or .trx.")

    masks = parser.add_argument_group(
        "Masks (volume groups of the HDF5; give at least one)")
    masks.add_argument("--seeding_mask_group", metavar="GROUP",
                       help="Seeds are drawn in its voxels >= 0.5. Default: "
                            "the tracking mask group.")
    masks.add_argument("--tracking_mask_group", metavar="GROUP",
                       help="Streamlines stop where it is < 0.5. Default: "
                            "none, they stop at the volume's border.")

    seeding = parser.add_argument_group("Seeding (one of)")
    seeds = seeding.add_mutually_exclusive_group()
    seeds.add_argument("--npv", type=int, metavar="N",
                       help="Seeds per voxel of the seeding mask. Default: 1, "
                            "unless --nt is given.")
    seeds.add_argument("--nt", type=int, metavar="N",
                       help="Total number of seeds.")

    tracking = parser.add_argument_group("Tracking")
    tracking.add_argument("--algo", choices=TRACKING_ALGOS, default="det",
                          help="det: the model's one direction (its output, "
                               "most probable vertex or mean; docs/models.md)"
                               "; prob: one drawn from its distribution.")
    tracking.add_argument("--step_size", type=float, metavar="MM",
                          help="Step in mm. Default: the model's, else the "
                               "step size of the HDF5 it was trained on "
                               "(required for a model trained with "
                               "--nb_points or --compress).")
    tracking.add_argument("--theta", type=float,
                          default=DEFAULT_MAX_ANGLE_DEG, metavar="DEG",
                          help="Largest angle between two steps, degrees.")
    tracking.add_argument("--min_length", type=float,
                          default=DEFAULT_MIN_LENGTH_MM,
                          metavar="MM", help="Shorter streamlines, and "
                                             "seeds alone, are discarded "
                                             "(mm, measured before "
                                             "--compress_th).")
    tracking.add_argument("--max_length", type=float,
                          default=DEFAULT_MAX_LENGTH_MM,
                          metavar="MM", help="Streamlines stop growing at "
                                             "this length (mm).")
    tracking.add_argument("--eos_stop", type=eos_stop_value, metavar="P|max",
                          help="Models with EOS: stop where the EOS "
                               "probability is above P, or with 'max' where "
                               "EOS is the most likely class (EOS against "
                               "each direction class of a classification "
                               "getter; P > 0.5 for the others). Default: "
                               "0.5 for models with EOS.")
    tracking.add_argument("--mask_interp", choices=MASK_INTERPOLATIONS,
                          default="trilinear",
                          help="How the tracking mask is read at a point: "
                               "trilinear interpolation, or the value of "
                               "the voxel holding it (the reference's "
                               "default is nearest). Default: trilinear.")
    tracking.add_argument("--max_invalid_nb_points", type=int, default=0,
                          metavar="N",
                          help="Points out of the tracking mask (inside the "
                               "volume) tolerated in each half of a "
                               "streamline before the next one stops it; "
                               "0: the first one does.")
    tracking.add_argument("--discard_last_point",
                          action=argparse.BooleanOptionalAction, default=True,
                          help="Leave out of a half stopped by the mask, "
                               "inside the volume, the point out of the mask "
                               "that stopped it (kept, it scores worse: see "
                               "docs/training.md); --no-discard_last_point "
                               "keeps it, as the reference does.")
    tracking.add_argument("--track_forward_only", action="store_true",
                          help="Do not track backward from the seeds.")
    tracking.add_argument("--use_latest_epoch", action="store_true",
                          help="Use the checkpoint's model, not the best.")

    run = parser.add_argument_group("Run")
    run.add_argument("--seed", type=int, default=1234,
                     help="Random seed of the seeds and of 'prob' "
                          "sampling. A streamline's draws depend only on "
                          "it and on the streamline's seed (its index "
                          "among the seeds): the same with any "
                          "--batch_size, and on another --device up to "
                          "float rounding. Default: 1234.")
    run.add_argument("--device", default="cpu",
                     help="Torch device, e.g. cpu or cuda.")
    run.add_argument("--batch_size", type=int, default=1000, metavar="N",
                     help="Streamlines tracked at once. On a GPU, "
                          "raise it (e.g. 10000): a step costs about the "
                          "same for 1 to 1000 streamlines there. "
                          "Default: 1000.")
    output = parser.add_argument_group("Output")
    output.add_argument("--compress_th", type=float, metavar="MM",
                        help="Compress the saved streamlines: every removed "
                             "point stays within MM mm of the compressed "
                             "streamline (dipy's compress_streamlines), "
                             "after the length filter: a compressed "
                             "streamline can be slightly shorter than "
                             "--min_length. Default: not compressed.")
    add_output_args(parser)
    return parser


def _check_numbers(args):
    checks = [
        ("npv", args.npv, args.npv is None or args.npv >= 1, ">= 1"),
        ("nt", args.nt, args.nt is None or args.nt >= 1, ">= 1"),
        ("step_size", args.step_size, args.step_size is None
         or 0 < args.step_size < math.inf, "a finite number > 0 mm"),
        ("theta", args.theta, 0 < args.theta <= 180, "in (0, 180] degrees"),
        ("min_length", args.min_length, args.min_length >= 0, ">= 0 mm"),
        ("max_length", args.max_length, args.max_length >= args.min_length
         and 0 < args.max_length < math.inf,
         "a finite number > 0 mm and >= --min_length"),
        ("eos_stop", args.eos_stop, eos_stop_is_valid(args.eos_stop),
         "in [0, 1) or 'max'"),
        ("max_invalid_nb_points", args.max_invalid_nb_points,
         args.max_invalid_nb_points >= 0, ">= 0"),
        ("compress_th", args.compress_th, args.compress_th is None
         or 0 < args.compress_th < math.inf, "a finite number > 0 mm"),
        ("batch_size", args.batch_size, args.batch_size >= 1, ">= 1"),
    ]
    for name, value, valid, expected in checks:
        if not valid:
            raise DwiMLUserError(
                f"argument --{name}: expected {expected}, found {value}.")
    # 'prob' draws read it modulo 2 ** 64, the seeds' placement whole.
    check_seed("--seed", args.seed)


def _check_model(model, args, input_volume):
    """Step size (mm) to use, after checking the model fits the inputs."""
    check_model_input_features(model, input_volume.nb_features,
                               args.input_group, args.hdf5_file)
    check_tracking_model(model, args.experiment_path)
    step_size = choose_step_size(args.step_size, model, args.experiment_path)
    # Refuses 'prob' with a deterministic direction getter before any work
    # (a model of your own without output_size: when tracking starts).
    if getattr(model, "output_size", None) is not None:
        model.get_tracking_directions(
            torch.zeros((1, model.output_size), device=model.device),
            args.algo)
    return step_size


def _mask_volume(volumes, group):
    if group is None:
        return None
    volume = volumes[group]
    if volume.nb_features != 1:
        raise DwiMLUserError(
            f"mask group '{group}': expected 1 feature, found "
            f"{volume.nb_features}.")
    return volume.data[..., 0]


def _warn_if_not_a_unit_mask(mask, group, mask_interp):
    """A 0/255 mask (a common uint8 one) read by the trilinear rule (inside
    where the interpolated value is >= 0.5) reaches about a voxel past its
    border: say so."""
    if mask is None or mask_interp != "trilinear":
        return
    largest = float(mask.max())
    if largest > 1.0:
        logging.warning(
            "tracking mask '%s' holds values up to %g: the trilinear rule "
            "(inside where the interpolated value is >= %g) reaches about a "
            "voxel past its border; store it as 0/1, or give --mask_interp "
            "nearest.", group, largest, MASK_THRESHOLD)


def _refuse_reference_seeding_positional(parser, argv):
    """The reference's command line puts a seeding mask group before the
    output: say what to use instead of "unrecognized arguments"."""
    known, extras = parser.parse_known_args(
        translate_reference_options(argv, TRACK_REFERENCE_OPTIONS))
    # ... input wm_mask out.trk: a group name, then a tractogram.
    if (len(extras) == 1 and not extras[0].startswith("-")
            and extension_of(extras[0]) in TRACTOGRAM_EXTENSIONS
            and extension_of(known.out_tractogram)
            not in TRACTOGRAM_EXTENSIONS):
        raise DwiMLUserError(
            f"positional arguments: expected the output tractogram after "
            f"the input group, found '{known.out_tractogram}' then "
            f"'{extras[0]}' (the reference's seeding mask positional): give "
            f"--seeding_mask_group {known.out_tractogram} and end with the "
            f"output.")


def _refuse_mask_options_without_mask(args):
    """The options of the tracking mask, given without one: ignored, they
    were silently."""
    given = [option for name, option in (
        ("mask_interp", "--mask_interp"),
        ("max_invalid_nb_points", "--max_invalid_nb_points"),
        ("discard_last_point", "--[no-]discard_last_point"))
        if name in args.options_given]
    if given and args.tracking_mask_group is None:
        raise DwiMLUserError(
            f"argument{'s' * (len(given) > 1)} {', '.join(given)}: expected "
            "--tracking_mask_group, which they apply to, found none "
            "(without it, tracking stops only at the volume's border).")


@script_entry_point
def main(argv=None):
    parser = _build_parser()
    argv = sys.argv[1:] if argv is None else argv
    _refuse_reference_seeding_positional(parser, argv)
    args = parse_script_args(parser, argv,
                             reference_options=TRACK_REFERENCE_OPTIONS)
    _check_numbers(args)
    check_tractogram_extension(args.out_tractogram)
    check_inputs_exist(args.experiment_path, what="experiment")
    check_inputs_exist(args.hdf5_file)
    check_output_free(args.out_tractogram, args.overwrite)
    check_provenance_free(args.out_tractogram, args.overwrite)
    seeding_group = args.seeding_mask_group or args.tracking_mask_group
    if seeding_group is None:
        raise DwiMLUserError(
            "arguments --seeding_mask_group/--tracking_mask_group: expected "
            "at least one mask group to seed in, found none.")
    _refuse_mask_options_without_mask(args)
    device = check_device(args.device, "--device")

    model, provenance = load_experiment_model(
        args.experiment_path, args.use_latest_epoch, device,
        with_provenance=True)
    groups = [args.input_group, seeding_group]
    if args.tracking_mask_group is not None:
        groups.append(args.tracking_mask_group)
    volumes = load_subject_volumes(args.hdf5_file, args.subject_id, groups)
    input_volume = volumes[args.input_group]
    step_size = _check_model(model, args, input_volume)
    warn_if_input_prepared_differently(model, args.experiment_path, args.hdf5_file,
                                       args.input_group)
    seeding_mask = _mask_volume(volumes, seeding_group)
    tracking_mask = _mask_volume(volumes, args.tracking_mask_group)
    eos_threshold = default_eos_threshold(model, args.eos_stop)

    npv = None if args.nt is not None else (args.npv or 1)
    seeds = make_seeds(seeding_mask, np.random.default_rng(args.seed),
                       npv=npv, nt=args.nt)
    tracker = BatchedTracker(
        model, input_volume.as_tensor(device), input_volume.affine,
        TrackingMask(input_volume.shape, tracking_mask, device,
                     args.mask_interp), step_size,
        max_angle_deg=args.theta, max_length_mm=args.max_length,
        eos_threshold=eos_threshold, algo=args.algo,
        track_forward_only=args.track_forward_only,
        rng_seed=args.seed,
        device=device, max_invalid_nb_points=args.max_invalid_nb_points,
        append_last_point=not args.discard_last_point)
    # After every check: a refused run prints its one error line alone.
    warn_if_not_trained_backward(args.experiment_path,
                                 args.track_forward_only)
    _warn_if_not_a_unit_mask(tracking_mask, args.tracking_mask_group,
                             args.mask_interp)
    fingerprint = compute_hdf5_fingerprint(args.hdf5_file)
    grids_unlike_training(args.experiment_path, [args.subject_id],
                          args.input_group, fingerprint)
    in_training_split = bool(training_split_subjects(
        args.experiment_path, [args.subject_id], args.hdf5_file,
        fingerprint))
    logging.info("Tracking %d seeds of subject %s, step %.3g mm.",
                 len(seeds), args.subject_id, step_size)
    result = tracker.track_in_batches(seeds, args.batch_size,
                                      disable_progress=progress_bars_disabled())
    _log_stops(result)

    keep = np.flatnonzero(keep_by_length(
        packed_arrays(result.streamlines)[2], step_size, args.min_length,
        args.max_length))
    logging.info("Kept %d of %d streamlines (%.3g to %.3g mm).", len(keep),
                 len(seeds), args.min_length, args.max_length)
    if len(keep) == 0:
        logging.warning(
            "no streamline kept: 0 of %d are %.3g to %.3g mm long (--min_length,"
            " --max_length); %s holds none (stops of the halves: %s).",
            len(seeds), args.min_length, args.max_length, args.out_tractogram,
            "; ".join(f"{name} {counts}"
                      for name, counts in _stop_counts(result)))
    streamlines = result.streamlines[keep]
    if args.compress_th is not None:
        streamlines = compress(streamlines, input_volume.affine,
                               args.compress_th)
    remove_provenance(args.out_tractogram)
    save_tractogram_with_seeds(streamlines, result.seeds[keep],
                               input_volume.affine, input_volume.shape,
                               args.out_tractogram)
    write_provenance(args.out_tractogram, {
        **provenance,
        **run_record(args, input_paths=("hdf5_file",),
                     other_inputs=("subject_id",),
                     leave_out=("experiment_path", "out_tractogram")),
        # What the options left to the model or to the other options.
        "used": {"step_size_mm": step_size, "eos_threshold": eos_threshold,
                 "seeding_mask_group": seeding_group, "npv": npv},
        "subject_in_training_split": in_training_split,
        "nb_seeds": len(seeds), "nb_streamlines": len(keep)})
    print(f"Saved {len(keep)} streamlines in {args.out_tractogram} (how "
          f"they were made: {provenance_path(args.out_tractogram)}).")


def _stop_counts(result):
    """(half, 'reason: count, ...') for each tracked half."""
    return [(name, ", ".join(f"{reason.name.lower()}: "
                             f"{int(np.sum(stops == reason))}"
                             for reason in StopReason))
            for name, stops in (("forward", result.forward_stops),
                                ("backward", result.backward_stops))
            if stops is not None]


def _log_stops(result):
    for name, counts in _stop_counts(result):
        logging.info("Stops of the %s halves: %s.", name, counts)


if __name__ == "__main__":
    main()
