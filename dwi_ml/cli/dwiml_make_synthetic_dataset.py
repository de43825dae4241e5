"""Write a small synthetic dataset ready for dwiml_create_hdf5_dataset.py."""
import os
import shlex

from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import (
    add_output_args,
    make_parser,
    parse_script_args,
)

DESCRIPTION = """\
Write a synthetic diffusion MRI dataset that a tracking model can really
learn from. Each subject (subj-01, subj-02, ...) gets, in
OUT_FOLDER/dwi_ml_ready/SUBJECT/, a few bundles of smooth curved streamlines
(bundles/bundle_XX.trk: arcs and S-curves with different orientations that
cross each other), a DWI volume dwi.nii.gz (one b=0 volume then the
diffusion-weighted ones, simulated with one tensor per bundle along the local
streamline direction, plus dwi.bval and dwi.bvec) and a white-matter mask
wm_mask.nii.gz (voxels crossed by streamlines, dilated by one voxel). All
files of a subject share one anisotropic voxel grid; subjects differ by a
random jitter of the geometry. OUT_FOLDER also gets config.json, the HDF5
creation config for these files, and training_subjs.txt,
validation_subjs.txt and testing_subjs.txt: with 3 subjects or more, the last
two are for validation and testing; with 2, the second is for validation;
with 1, it is for training. The same seed gives byte-identical files (but
the hidden marker .dwi_ml_output.json, which records the creation time)."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("out_folder",
                        help="Output folder: new or empty, or a synthetic "
                             "dataset to replace with -f.")

    data = parser.add_argument_group("Dataset size")
    data.add_argument("--nb_subjects", type=int, default=3, metavar="N",
                      help="Number of subjects.")
    data.add_argument("--nb_streamlines", type=int, default=300, metavar="K",
                      help="Streamlines per subject, over all bundles.")
    data.add_argument("--nb_bundles", type=int, default=3, metavar="B",
                      help="Bundles per subject.")

    grid = parser.add_argument_group("Images")
    grid.add_argument("--shape", type=int, nargs=3, default=(24, 24, 16),
                      metavar=("X", "Y", "Z"), help="Volume size, in voxels.")
    grid.add_argument("--voxel_size", type=float, nargs=3,
                      default=(2.0, 2.5, 3.0), metavar=("MM", "MM", "MM"),
                      help="Voxel size, in mm.")
    grid.add_argument("--nb_directions", type=int, default=44, metavar="D",
                      help="Diffusion-weighted volumes (b=1000 s/mm^2) after "
                           "the b=0 volume.")

    parser.add_argument("--seed", type=int, default=0,
                        help="Random seed; the same seed gives the same "
                             "files.")
    parser.add_argument("--nb_processes", type=int, default=1, metavar="P",
                        help="Subjects made at once, each in its own "
                             "process (the files are the same whatever P).")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    paths = make_synthetic_dataset(
        args.out_folder, nb_subjects=args.nb_subjects,
        nb_streamlines=args.nb_streamlines, shape=args.shape,
        voxel_size=args.voxel_size, nb_bundles=args.nb_bundles,
        nb_directions=args.nb_directions, seed=args.seed,
        overwrite=args.overwrite, nb_processes=args.nb_processes,
        as_options=True)
    folder = args.out_folder
    splits = "; ".join(f"{split}: {', '.join(ids) or 'none'}"
                       for split, ids in paths.splits.items())
    print(f"Wrote {len(paths.subjects)} subject(s) in {folder} ({splits}).")
    # README.md's command: without --step_size, a model trained on the
    # file could only track with a --step_size given then.
    print("Next: dwiml_create_hdf5_dataset.py " + " ".join(shlex.quote(
        os.path.join(folder, name)) for name in (
            "dwi_ml_ready", "data.hdf5", "config.json",
            "training_subjs.txt", "validation_subjs.txt",
            "testing_subjs.txt")) + " --step_size 1.0")


if __name__ == "__main__":
    main()
