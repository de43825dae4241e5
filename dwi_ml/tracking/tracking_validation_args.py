"""Tracking validation's parameters: script options, checks, saved form.

The parameters live in ``parameters.json`` under ``tracking_validation``
(absent or null when off), so that a resumed run tracks as the first did.
See :mod:`dwi_ml.tracking.tracking_validation` for what is measured.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Union

import h5py

from dwi_ml.data.hdf5.file_check import check_dwiml_hdf5, hdf5_read_errors
from dwi_ml.data.hdf5.layout import VOLUME_TYPE, decode_str
from dwi_ml.io_utils.arg_checks import check_choice, check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.stopping import eos_stop_is_valid, eos_stop_value
from dwi_ml.training.monitors import BEST_MODEL_METRICS

GENERATION = "generation"
WHOLE_SUBJECT = "whole_subject"
MODES = (GENERATION, WHOLE_SUBJECT)
TRACKING_TIME = "tracking_time"
# The metrics each mode writes (when its data allows: see LABEL_METRICS
# and connectivity_score).
MODE_METRICS = {
    GENERATION: ("tracking_endpoint_distance", "connectivity_score"),
    WHOLE_SUBJECT: ("tracking_f1", "tracking_ol", "tracking_or",
                    "tracking_vc", "tracking_ic", "tracking_nc",
                    "tracking_points_within_1_vox",
                    "tracking_points_within_2_vox",
                    "tracking_points_aligned"),
}
# whole_subject metrics that need bundle labels (--..._bundle_key).
LABEL_METRICS = ("tracking_vc", "tracking_ic", "tracking_nc")

DEFAULT_NB_STREAMLINES = 500
DEFAULT_NB_POINTS = 5
DEFAULT_NB_SEEDS = 1000
DEFAULT_BATCH_SIZE = 1000


@dataclass(frozen=True)
class TrackingValidationParams:
    """How tracking validation runs (see the script options' help).

    Attributes
    ----------
    every : int
        Track at epochs 0, every, 2 every... (>= 1).
    mode : str
        'generation' or 'whole_subject'.
    nb_streamlines : int or None
        generation: streamlines per validation subject (None: all).
    nb_points : int
        generation: points kept from each streamline before tracking on.
    nb_seeds : int
        whole_subject: seeds per validation subject.
    seeding_mask_group, tracking_mask_group : str or None
        Volume groups; the seeding mask defaults to the tracking mask.
    bundle_key : str or None
        whole_subject: data_per_streamline key of the bundle labels.
    batch_size : int
        Streamlines tracked at once.
    eos_stop : float, 'max' or None
        EOS threshold of the tracker (``--eos_stop`` of
        ``dwiml_track_from_model.py``); None: the model's default (0.5
        with EOS, none without).
    """

    every: int
    mode: str = GENERATION
    nb_streamlines: Optional[int] = DEFAULT_NB_STREAMLINES
    nb_points: int = DEFAULT_NB_POINTS
    nb_seeds: int = DEFAULT_NB_SEEDS
    seeding_mask_group: Optional[str] = None
    tracking_mask_group: Optional[str] = None
    bundle_key: Optional[str] = None
    batch_size: int = DEFAULT_BATCH_SIZE
    eos_stop: Optional[Union[float, str]] = None

    def __post_init__(self):
        check_int("--tracking_validation_every", self.every, 1)
        check_choice("--tracking_validation_mode", self.mode, MODES)
        if self.nb_streamlines is not None:
            check_int("--tracking_validation_nb_streamlines",
                      self.nb_streamlines, 1)
        check_int("--tracking_validation_nb_points", self.nb_points, 1)
        check_int("--tracking_validation_nb_seeds", self.nb_seeds, 1)
        check_int("--tracking_validation_batch_size", self.batch_size, 1)
        if not eos_stop_is_valid(self.eos_stop):
            raise DwiMLUserError(
                f"argument --tracking_validation_eos_stop: expected a "
                f"probability in [0, 1) or 'max', found {self.eos_stop!r}.")
        if self.mode == WHOLE_SUBJECT and self.seeding_mask_group is None \
                and self.tracking_mask_group is None:
            raise DwiMLUserError(
                "--tracking_validation_mode whole_subject: expected "
                "--tracking_validation_seeding_mask_group or "
                "--tracking_validation_tracking_mask_group, found neither.")

    def as_dict(self):
        """JSON-able, for ``parameters.json``."""
        return asdict(self)


def add_tracking_validation_args(parser):
    """The options of tracking validation and --best_model_metric."""
    group = parser.add_argument_group(
        "Tracking validation (see docs/tracking.md)")
    group.add_argument(
        "--tracking_validation_every", type=int, metavar="N",
        help="Every N epochs (at epochs 0, N, 2N...), after the local "
             "validation, track on the validation subjects with the current "
             "model and log the tracking metrics; 0 or none: off (default).")
    group.add_argument(
        "--tracking_validation_mode", choices=MODES, default=GENERATION,
        help="'generation': continue validation streamlines from their first "
             "points, measure the distance to their true endpoint "
             "(tracking_endpoint_distance, mm) and, when the HDF5 has the "
             "group's connectivity, connectivity_score. 'whole_subject': "
             "track from seeds in a mask and score the tractogram against "
             "the subject's streamlines (tracking_f1, tracking_vc...). "
             f"Default: {GENERATION}.")
    group.add_argument(
        "--tracking_validation_nb_streamlines", type=int, metavar="N",
        default=DEFAULT_NB_STREAMLINES,
        help="generation: streamlines per validation subject, drawn once "
             f"with --seed (default: {DEFAULT_NB_STREAMLINES}; fewer "
             "subjects' streamlines: all).")
    group.add_argument(
        "--tracking_validation_nb_points", type=int, metavar="K",
        default=DEFAULT_NB_POINTS,
        help="generation: points kept from each streamline (resampled to the "
             "tracking step) before the model tracks on; shorter streamlines "
             f"are skipped (default: {DEFAULT_NB_POINTS}).")
    group.add_argument(
        "--tracking_validation_nb_seeds", type=int, metavar="N",
        default=DEFAULT_NB_SEEDS,
        help="whole_subject: seeds per validation subject, drawn once with "
             f"--seed (default: {DEFAULT_NB_SEEDS}).")
    group.add_argument(
        "--tracking_validation_seeding_mask_group", metavar="GROUP",
        help="whole_subject: volume group whose voxels >= 0.5 are seeded "
             "(default: the tracking mask group).")
    group.add_argument(
        "--tracking_validation_tracking_mask_group", metavar="GROUP",
        help="Volume group where streamlines may go (>= 0.5); default: "
             "none, they stop at the volume's border.")
    group.add_argument(
        "--tracking_validation_bundle_key", metavar="KEY",
        help="whole_subject: data_per_streamline key of the streamline "
             "group holding bundle labels; with it, tracking_f1 is the mean "
             "bundle F1 and tracking_vc/ic/nc are logged (default: none; "
             "tracking_f1 then compares the voxel masks of the whole "
             "tractograms).")
    group.add_argument(
        "--tracking_validation_batch_size", type=int, metavar="N",
        default=DEFAULT_BATCH_SIZE,
        help=f"Streamlines tracked at once (default: {DEFAULT_BATCH_SIZE}).")
    group.add_argument(
        "--tracking_validation_eos_stop", type=eos_stop_value,
        metavar="P|max",
        help="Models with EOS: tracking stops where the EOS probability is "
             "above P, or with 'max' where EOS is the most likely class, as "
             "dwiml_track_from_model.py's --eos_stop; give the threshold "
             "you will track with, so that the best epoch is chosen with it "
             "(default: the model's, 0.5 with EOS).")
    group.add_argument(
        "--best_model_metric", default="valid_loss", metavar="NAME",
        help="Monitor that picks best_model/ and drives --patience: "
             f"{', '.join(BEST_MODEL_METRICS)}. Lower is better for losses, "
             "distances, tracking_or, tracking_ic and tracking_nc, higher for "
             "the others. Tracking metrics need --tracking_validation_every "
             "(default: valid_loss).")
    return group


def tracking_validation_params_from_args(args):
    """TrackingValidationParams from the script options, or None when off.

    Also checks ``--best_model_metric`` against them.

    Raises
    ------
    DwiMLUserError
        A bad value, or a best-model metric the run will not write.
    """
    params = None
    if args.tracking_validation_every is not None \
            and args.tracking_validation_every < 0:
        raise DwiMLUserError(
            f"argument --tracking_validation_every: expected an integer >= 0,"
            f" found {args.tracking_validation_every}.")
    if args.tracking_validation_every:
        params = TrackingValidationParams(
            every=args.tracking_validation_every,
            mode=args.tracking_validation_mode,
            nb_streamlines=args.tracking_validation_nb_streamlines,
            nb_points=args.tracking_validation_nb_points,
            nb_seeds=args.tracking_validation_nb_seeds,
            seeding_mask_group=args.tracking_validation_seeding_mask_group,
            tracking_mask_group=args.tracking_validation_tracking_mask_group,
            bundle_key=args.tracking_validation_bundle_key,
            batch_size=args.tracking_validation_batch_size,
            eos_stop=args.tracking_validation_eos_stop)
    check_best_model_metric_option(args.best_model_metric, params)
    return params


def check_best_model_metric_option(metric, params):
    """Refuse a best-model metric that the run will not write."""
    if metric not in BEST_MODEL_METRICS:
        raise DwiMLUserError(
            f"argument --best_model_metric: expected one of "
            f"{', '.join(BEST_MODEL_METRICS)}, found '{metric}'.")
    mode = next((mode for mode, names in MODE_METRICS.items()
                 if metric in names), None)
    if mode is None:
        return
    if params is None:
        raise DwiMLUserError(
            f"argument --best_model_metric: '{metric}' is a tracking metric; "
            "expected --tracking_validation_every N, found tracking "
            "validation off.")
    if params.mode != mode:
        raise DwiMLUserError(
            f"argument --best_model_metric: '{metric}' is a metric of "
            f"--tracking_validation_mode {mode}, found {params.mode}.")
    if metric in LABEL_METRICS and params.bundle_key is None:
        raise DwiMLUserError(
            f"argument --best_model_metric: '{metric}' needs bundle labels; "
            "expected --tracking_validation_bundle_key KEY, found none.")



def check_tracking_validation_data(hdf5_file, streamline_group, params,
                                   best_model_metric):
    """The metrics tracking validation will write for this HDF5 file.

    Reads only metadata. ``tracking_vc``, ``tracking_ic`` and
    ``tracking_nc`` need ``bundle_key``; ``connectivity_score`` needs the
    group's connectivity in every validation subject.

    Parameters
    ----------
    hdf5_file, streamline_group : str
    params : TrackingValidationParams or None
        None: off (no metric).
    best_model_metric : str

    Returns
    -------
    tuple of str

    Raises
    ------
    DwiMLUserError
        No validation subject, a mask group that is not a volume group, a
        subject without the bundle key, or a best-model metric the data
        cannot give.
    """
    if params is None:
        return ()
    subjects = check_dwiml_hdf5(hdf5_file)["validation"]
    if not subjects:
        raise DwiMLUserError(
            f"--tracking_validation_every: expected validation subjects in "
            f"'{hdf5_file}', found none.")
    masks = {"seeding_mask_group": params.seeding_mask_group,
             "tracking_mask_group": params.tracking_mask_group}
    has_connectivity = True
    with h5py.File(hdf5_file, "r") as hdf_file, \
            hdf5_read_errors(hdf5_file):
        for subject in subjects:
            groups = hdf_file[subject]
            for option, group in masks.items():
                if group is not None and (group not in groups or decode_str(
                        groups[group].attrs.get("type", "")) != VOLUME_TYPE):
                    raise DwiMLUserError(
                        f"--tracking_validation_{option}: expected a volume "
                        f"group of '{hdf5_file}', found no group '{group}' in "
                        f"subject '{subject}'.")
            streamlines = groups[streamline_group]
            has_connectivity &= "connectivity_matrix" in streamlines
            key = params.bundle_key
            if key is not None and key not in streamlines.get(
                    "data_per_streamline", {}):
                raise DwiMLUserError(
                    f"--tracking_validation_bundle_key: expected "
                    f"data_per_streamline '{key}' in '{hdf5_file}', subject "
                    f"'{subject}', group '{streamline_group}'; found none.")
    names = tuple(
        name for name in MODE_METRICS[params.mode]
        if (name not in LABEL_METRICS or params.bundle_key is not None)
        and (name != "connectivity_score" or has_connectivity))
    if best_model_metric in MODE_METRICS[params.mode] and \
            best_model_metric not in names:
        needed = (f"the connectivity of group '{streamline_group}' in every "
                  f"validation subject of '{hdf5_file}'"
                  if best_model_metric == "connectivity_score"
                  else "--tracking_validation_bundle_key")
        raise DwiMLUserError(
            f"argument --best_model_metric: '{best_model_metric}' needs "
            f"{needed}, found none.")
    return names
