"""Print what a dwi_ml HDF5 file holds."""
from dwi_ml.data.hdf5.architecture import describe_hdf5
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import (
    add_verbose_arg,
    make_parser,
    parse_script_args,
)

DESCRIPTION = """\
Print the content of a dwi_ml HDF5 file without loading its data: the root
attributes (version, date, resampling options, groups config), the
training, validation and testing subjects, then, for each subject, every
group with its type, its datasets (shape and dtype), its number of features
(volumes) or of streamlines and points (streamlines), and its attributes.
Fails with a one-line error on a file that is not HDF5 or lacks the dwi_ml
layout."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("hdf5_file", help="A dwi_ml HDF5 file.")
    add_verbose_arg(parser)
    return parser


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    print("\n".join(describe_hdf5(args.hdf5_file)))


if __name__ == "__main__":
    main()
