"""Create the dwi_ml HDF5 file of a dwi_ml_ready folder."""
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.subjects import read_subjects_file
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import (
    add_overwrite_arg,
    add_verbose_arg,
    check_inputs_exist,
    make_parser,
    set_verbosity,
)

DEFAULT_COMPRESS_MM = 0.1

DESCRIPTION = """\
Gather the volumes and tractograms of many subjects into one HDF5 file for
training. DWI_ML_READY_FOLDER holds one folder per subject. CONFIG_JSON lists
the HDF5 groups: each has a "type" ("volume" or "streamlines") and "files"
(relative to the subject folder, "*" wildcards expanded in sorted order).
The files of a volume group are concatenated along the feature axis and
standardized ("standardization": "all", "independent", "per_file" or
"none", over the union of the "std_mask" files, or over non-zero voxels
without one; voxels outside the mask become 0). The .trk, .tck and .trx
files of a streamline group are concatenated and stored in voxel space with
a corner origin, on the grid of the "reference" volume group (default: the
first volume group); "dps_keys" keeps data_per_streamline. The three
subject lists are text files of subject IDs (one may be empty). Every
input is checked before any work, and the output is written under a
temporary name then renamed, so a failed or interrupted run leaves nothing
at OUT_HDF5. See docs/hdf5_layout.md for the layout and a config example."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("dwi_ml_ready_folder",
                        help="Folder with one sub-folder per subject.")
    parser.add_argument("out_hdf5", help="Output HDF5 file.")
    parser.add_argument("config_json", help="Groups config (JSON).")
    parser.add_argument("training_subjs", help="Training subject IDs (.txt).")
    parser.add_argument("validation_subjs",
                        help="Validation subject IDs (.txt).")
    parser.add_argument("testing_subjs", help="Testing subject IDs (.txt).")

    streamlines = parser.add_argument_group(
        "Streamline processing (in RAS mm, at most one)")
    choice = streamlines.add_mutually_exclusive_group()
    choice.add_argument("--step_size", type=float, metavar="MM",
                        help="Resample streamlines to max(ceil(L / MM), 2) "
                             "equally spaced points (L: length in mm).")
    choice.add_argument("--nb_points", type=int, metavar="N",
                        help="Resample streamlines to N points each.")
    choice.add_argument("--compress", type=float, nargs="?", metavar="TOL",
                        const=DEFAULT_COMPRESS_MM,
                        help="Compress streamlines with this tolerance in mm "
                             f"({DEFAULT_COMPRESS_MM} mm if given alone).")
    streamlines.add_argument(
        "--remove_invalid", action="store_true",
        help="Drop streamlines with points outside the volume (their count "
             "is logged per subject and group) instead of failing.")

    add_overwrite_arg(parser)
    add_verbose_arg(parser)
    return parser


@script_entry_point
def main(argv=None):
    args = _build_parser().parse_args(argv)
    set_verbosity(args.verbose)
    check_inputs_exist(args.dwi_ml_ready_folder, args.config_json,
                       args.training_subjs, args.validation_subjs,
                       args.testing_subjs)
    create_hdf5_dataset(
        args.dwi_ml_ready_folder, args.out_hdf5, args.config_json,
        read_subjects_file(args.training_subjs),
        read_subjects_file(args.validation_subjs),
        read_subjects_file(args.testing_subjs),
        step_size=args.step_size, nb_points=args.nb_points,
        compress=args.compress, remove_invalid=args.remove_invalid,
        overwrite=args.overwrite)
