"""Create the dwi_ml HDF5 file of a dwi_ml_ready folder."""
import argparse
import os
import time

import h5py

from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.layout import (
    SPLITS,
    STREAMLINES_TYPE,
    decode_str,
    read_subject_list,
)
from dwi_ml.data.hdf5.subjects import read_subjects_file
from dwi_ml.io_utils.arg_checks import check_extension
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    make_parser,
    parse_script_args,
)

DEFAULT_COMPRESS_MM = 0.01  # the reference dwi_ml's --compress given alone

# Options of the reference dwi_ml's creation script (all its versions) that
# have no equivalent here, with what to use instead.
REFERENCE_ONLY_OPTIONS = {
    "--std_mask": "put the masks in the config, as \"std_mask\": [...] in "
                  "each volume group",
    "--do_not_verify_files_presence": "a missing file is always an error "
                                      "here; remove it from the config or "
                                      "the subject from the lists",
    "--save_intermediate": "write a group back to NIfTI or a tractogram "
                           "with dwiml_hdf5_extract_data.py",
    "--logging": "use -v [DEBUG|INFO|WARNING]",
    "--name": "give the output file's path as OUT_HDF5",
    "--space": "streamlines are always stored in voxel space, corner "
               "origin",
    **{option: "put \"connectivity_matrix\" with \"connectivity_nb_blocs\" "
               "or \"connectivity_labels\" in the streamline group of the "
               "config"
       for option in ("--compute_connectivity_matrix",
                      "--compute_connectivity_from_blocs",
                      "--compute_connectivity_from_labels",
                      "--connectivity_nb_blocs",
                      "--connectivity_downsample_size")},
}

DESCRIPTION = """\
Gather the volumes and tractograms of many subjects into one HDF5 file for
training. DWI_ML_READY_FOLDER holds one folder per subject. CONFIG_JSON lists
the HDF5 groups: each has a "type" ("volume" or "streamlines") and "files"
(relative to the subject folder, "*" wildcards expanded in sorted order).
The files of a volume group are concatenated along the feature axis and
standardized ("standardization": "all", "independent", "per_file" or
"none": the mean and std over the union of the "std_mask" files, or over
the voxels where every feature is non-zero without one, map every voxel,
as in the reference dwi_ml). The .trk, .tck and .trx
files of a streamline group are concatenated and stored in voxel space with
a corner origin, on the grid of the "reference" volume group (default: the
first volume group); "dps_keys" keeps data_per_streamline. The three
subject lists are text files of subject IDs (one may be empty). The
options, lists, headers and volumes are checked before any work; each
tractogram is read once, when written, and checked as it is read. The
output is written under a temporary name then renamed, so a failed or
interrupted run leaves nothing at OUT_HDF5. With -v, a progress bar counts
the subjects (it names the one being written). On success, one paragraph
sums up the file: subjects per split, streamlines and points, file size and
time taken. The reference dwi_ml's configs, lists and commands work as
they are; its options without an equivalent here (--std_mask,
--save_intermediate, --logging...) are refused with what to use instead.
See docs/hdf5_layout.md for the layout and a config example."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("dwi_ml_ready_folder",
                        help="Folder with one sub-folder per subject.")
    parser.add_argument("out_hdf5", help="Output HDF5 file (.hdf5 or .h5).")
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
        help="Drop streamlines with points outside the volume, or with "
             "fewer than 2 distinct points (their count is logged per "
             "subject and group), and skip empty tractogram files (with a "
             "warning naming each), instead of failing.")
    parser.add_argument(
        "--enforce_files_presence", type=_only_true, default=True,
        metavar="True",
        help="Accepted for the reference dwi_ml's commands: a missing file "
             "is always an error here, so only True is accepted. Default: "
             "True.")

    add_output_args(parser)
    return parser


def _only_true(value):
    """argparse type of --enforce_files_presence: True, or a clear error."""
    if value.lower() in ("true", "1", "yes"):
        return True
    raise argparse.ArgumentTypeError(
        f"found {value!r}; a missing file is always an error here: remove "
        "it from the config or the subject from the lists")


def summarize_hdf5(path):
    """Count what a dwi_ml HDF5 file holds, reading only ``lengths``.

    Returns
    -------
    dict
        ``subjects``: {split: number of subjects}; ``nb_streamlines`` and
        ``nb_points``: totals over every subject and streamline group;
        ``file_size_bytes``.
    """
    nb_streamlines = nb_points = 0
    with h5py.File(path, "r") as hdf_file:
        subjects = {split: len(read_subject_list(hdf_file.attrs, split))
                    for split in SPLITS}
        for subject_group in hdf_file.values():
            for group in subject_group.values():
                if decode_str(group.attrs.get("type", "")) == STREAMLINES_TYPE:
                    lengths = group["lengths"][:]
                    nb_streamlines += len(lengths)
                    nb_points += int(lengths.sum())
    return {"subjects": subjects, "nb_streamlines": nb_streamlines,
            "nb_points": nb_points, "file_size_bytes": os.path.getsize(path)}


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def format_summary(path, summary, seconds):
    """The one-paragraph summary printed after a successful creation."""
    splits = ", ".join(f"{count} {split}"
                       for split, count in summary["subjects"].items())
    return (f"Created {path} in {seconds:.1f} s: "
            f"{_count(sum(summary['subjects'].values()), 'subject')} "
            f"({splits}), "
            f"{_count(summary['nb_streamlines'], 'streamline')}, "
            f"{_count(summary['nb_points'], 'point')}, "
            f"{summary['file_size_bytes'] / 1024 ** 2:.2f} MiB "
            f"({summary['file_size_bytes']} bytes).")


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv,
                             reference_options=REFERENCE_ONLY_OPTIONS)
    check_extension(args.out_hdf5, (".hdf5", ".h5"))
    check_inputs_exist(args.dwi_ml_ready_folder, args.config_json,
                       args.training_subjs, args.validation_subjs,
                       args.testing_subjs)
    start = time.perf_counter()
    create_hdf5_dataset(
        args.dwi_ml_ready_folder, args.out_hdf5, args.config_json,
        read_subjects_file(args.training_subjs),
        read_subjects_file(args.validation_subjs),
        read_subjects_file(args.testing_subjs),
        step_size=args.step_size, nb_points=args.nb_points,
        compress=args.compress, remove_invalid=args.remove_invalid,
        overwrite=args.overwrite)
    print(format_summary(args.out_hdf5, summarize_hdf5(args.out_hdf5),
                         time.perf_counter() - start))


if __name__ == "__main__":
    main()
