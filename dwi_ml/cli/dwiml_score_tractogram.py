"""Score a tractogram against the subject's reference tractogram."""
import logging
import os

import numpy as np

from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.tracking.bundle_scoring import check_bundle_labels
from dwi_ml.tracking.scoring import (
    DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
    DEFAULT_DISTANCES_VOX,
    DEFAULT_MAX_ANGLE_DEG,
    DEFAULT_MAX_STEP_VOX,
    DEFAULT_MIN_SHARE_IN_VOLUME,
    check_scoring_numbers,
    score_tractogram,
)
from dwi_ml.tracking.scoring_io import (
    bundle_labels_of,
    format_scores,
    load_grid,
    load_tractogram_vox_corner,
    scores_for_json,
)

DESCRIPTION = """\
Score a tractogram against a reference tractogram of the same subject (its
known streamlines). Both are loaded on the voxel grid of MASK_OR_VOLUME (any
NIfTI of the subject: only its shape and affine are used), where distances
are measured in voxels and voxel masks are drawn. The reference is first
resampled to steps of at most 0.5 voxel, so that the distance to its nearest
point approximates the distance to its curves (within 0.03 voxel at 1
voxel).

Points: the share of tracked points within 1 and within 2 voxels (<=) of a
reference point, and the share whose nearest reference point is within 2
voxels with a direction (in mm, whatever the sign) within --max_angle
degrees of the tracked direction.

Bundles, with --bundle_key (the reference's data_per_streamline key holding
each streamline's integer bundle label), as in the Tractometer. Each
bundle's volume is the set of voxels holding its (resampled) reference
points; its head and tail regions are the voxels of its streamlines' first
and last points (each streamline oriented like the bundle's first one),
dilated by one voxel (26 neighbours).
  VC (valid connection) of bundle b: one endpoint in b's head, the other in
     b's tail, and at least --min_share_in_volume of its points (resampled
     to 0.5 voxel) in b's volume; several such bundles: the one holding the
     largest share (lowest label on a tie).
  IC (invalid connection): not a VC, both endpoints in end regions.
  NC (no connection): an endpoint in no end region.
  VC, IC and NC are shares of the tracked streamlines. VB: bundles with at
  least one VC. IB: distinct pairs of end regions joined by ICs, bundles'
  own pairs left out (an endpoint in several regions takes the first one,
  by label, head before tail).
  Per bundle, with A the voxels of its VCs and B its volume: OL = |A&B|/|B|,
  OR = |A-B|/|B|, F1 = 2|A&B|/(|A|+|B|), 0 for a bundle without VC; their
  means are over all bundles.

Lengths: mean and median length (mm) of the tracked streamlines.

The scores are printed and, with --out_json, saved in a JSON dict: one key
per score (counts as integers), then 'inputs' (the absolute paths of the
three files), 'options' (every option, and the scoring's fixed distances:
the numbers depend on them) and 'dwi_ml_version'."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("in_tractogram", help="Tractogram to score (.trk, "
                                              ".tck or .trx).")
    parser.add_argument("reference_tractogram",
                        help="The subject's known streamlines.")
    parser.add_argument("mask_or_volume",
                        help="NIfTI giving the voxel grid (shape, affine).")
    parser.add_argument("--bundle_key", metavar="KEY",
                        help="data_per_streamline key of the reference "
                             "holding bundle labels. For a .trx reference, "
                             "'groups' reads its groups instead: group i in "
                             "the sorted order of their names is bundle i, "
                             "and each streamline must be in one group. "
                             "Without it, no bundle scores.")
    parser.add_argument("--out_json", metavar="FILE",
                        help="Save the scores in this .json file.")

    rules = parser.add_argument_group("Rules")
    rules.add_argument("--min_share_in_volume", type=float, metavar="S",
                       default=DEFAULT_MIN_SHARE_IN_VOLUME,
                       help="Share of a VC's points in its bundle's volume.")
    rules.add_argument("--max_angle", type=float, metavar="DEG",
                       default=DEFAULT_MAX_ANGLE_DEG,
                       help="Largest angle of an aligned point, degrees.")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    check_scoring_numbers(DEFAULT_DISTANCES_VOX, args.max_angle,
                          DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
                          args.min_share_in_volume, DEFAULT_MAX_STEP_VOX,
                          {"max_angle_deg": "--max_angle",
                           "min_share_in_volume": "--min_share_in_volume"})
    check_inputs_exist(args.in_tractogram, args.reference_tractogram,
                       args.mask_or_volume)
    if args.out_json is not None:
        check_output_free(args.out_json, args.overwrite,
                          extensions=(".json",))

    shape, affine = load_grid(args.mask_or_volume)
    # score_tractogram warns of its points off the grid, with their count.
    tracked = load_tractogram_vox_corner(args.in_tractogram,
                                         args.mask_or_volume,
                                         warn_outside=False)
    # A reference off the grid is refused below: no warning before.
    reference = load_tractogram_vox_corner(args.reference_tractogram,
                                           args.mask_or_volume,
                                           warn_outside=False)
    labels = names = None
    if args.bundle_key is None and reference.data_per_streamline:
        logging.info("No --bundle_key: no bundle scores. The reference has "
                     "the data_per_streamline keys %s.",
                     sorted(reference.data_per_streamline.keys()))
    if args.bundle_key is not None:
        labels, names = bundle_labels_of(reference, args.bundle_key,
                                         args.reference_tractogram)
        labels = check_bundle_labels(
            labels, len(reference),
            where=f"reference '{args.reference_tractogram}' key "
                  f"'{args.bundle_key}'")
    if len(reference) == 0:
        raise DwiMLUserError(
            f"reference '{args.reference_tractogram}': expected streamlines, "
            "found none.")
    if len(tracked) == 0:
        logging.warning("'%s' holds no streamline: every share below is 0 "
                        "(nothing tracked, nothing valid).", args.in_tractogram)
    logging.info("Scoring %d streamlines against %d reference streamlines%s.",
                 len(tracked), len(reference),
                 "" if labels is None else
                 f" in {len(np.unique(labels))} bundles")

    try:
        scores = score_tractogram(
            tracked.streamlines, reference.streamlines, shape, affine, labels,
            max_angle_deg=args.max_angle,
            direction_max_distance_vox=DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
            min_share_in_volume=args.min_share_in_volume,
            tracked_name=f"tractogram '{args.in_tractogram}'")
    except DwiMLUserError as error:
        # The library names its argument; a user of the script, the file.
        raise DwiMLUserError(str(error).replace(
            "score_tractogram argument reference:",
            f"reference '{args.reference_tractogram}':", 1).replace(
            "in the space of this grid?",
            f"in the space of '{args.mask_or_volume}' (a .tck has no "
            "header: its points must be in that volume's RAS mm)?")) from None
    print(format_scores(scores))
    if names is not None:
        scores["bundle_names"] = {str(label): name
                                  for label, name in names.items()}
        print("\n".join(f"bundle_{label} is group '{name}'"
                        for label, name in names.items()))
    if args.out_json is not None:
        record = run_record(args, input_paths=(
            "in_tractogram", "reference_tractogram", "mask_or_volume"),
            leave_out=("out_json",))
        record["options"].update(
            distances_vox=list(DEFAULT_DISTANCES_VOX),
            direction_max_distance_vox=DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
            max_step_vox=DEFAULT_MAX_STEP_VOX)
        write_json_atomic(args.out_json, {**scores_for_json(scores),
                                          **record}, strict=False)
        logging.info("Saved %s.", os.path.abspath(args.out_json))


if __name__ == "__main__":
    main()
