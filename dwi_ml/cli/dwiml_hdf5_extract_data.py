"""Write one group of one subject of a dwi_ml HDF5 file back to a file."""
import logging
import os

import numpy as np

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.arg_checks import check_extension, extension_of
from dwi_ml.io_utils.atomic import save_npy
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.nifti_files import (
    NIFTI_EXTENSIONS,
    save_nifti_atomic,
    scanner_image,
)
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.io_utils.tractogram_files import TRACTOGRAM_EXTENSIONS
from dwi_ml.tracking.tracking_io import save_tractogram_atomic

logger = logging.getLogger(__name__)

MATRIX_EXTENSIONS = (".npy",)

DESCRIPTION = """\
Write one group of one subject of a dwi_ml HDF5 file back to a file, to
check what went into the HDF5. A volume group becomes a NIfTI file (OUT
ending in .nii or .nii.gz) with the stored affine and float32 values as
stored, that is after the concatenation of its files along the feature axis
and their standardization; a group of one feature is written as a 3-D
volume, otherwise as 4-D (X, Y, Z, F). A streamline group becomes a .trk,
.tck or .trx file in the subject's space (RAS mm, on the group's reference
grid) with its stored data_per_streamline (a .tck file cannot hold them:
they are dropped, with a warning); its points are those stored, so after
any resampling or compression done at creation. A streamline group with
OUT ending in .npy gives instead its stored connectivity matrix (bool, the
reference dwi_ml's layout: one row per bloc, or per label present in
increasing order), e.g. the true matrix for
dwiml_compute_connectivity_score.py. SUBJECT may be in any
split. Every input is checked, and an existing OUT refused without -f,
before anything is written."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("hdf5_file", help="A dwi_ml HDF5 file.")
    parser.add_argument("subject_id", metavar="SUBJECT",
                        help="Subject ID, in any split.")
    parser.add_argument("group", metavar="GROUP",
                        help="A volume or streamline group of the subject.")
    parser.add_argument("out_file", metavar="OUT",
                        help="Output .nii/.nii.gz (volume group), "
                             ".trk/.tck/.trx (streamline group) or .npy (a "
                             "streamline group's connectivity matrix).")
    add_output_args(parser)
    return parser


def _check_extension(path, expected, what):
    if os.path.isdir(path):
        # The shared check names a folder as such (not "found 'none'").
        check_extension(path, expected)
    if extension_of(path) not in expected:
        raise DwiMLUserError(
            f"output '{path}': a {what} is written to one of "
            f"{', '.join(expected)}, found '{extension_of(path) or 'none'}'.")


def load_subject_group(hdf5_file, subject_id, group):
    """The lazily read data of one group of one subject, whatever its split.

    Returns
    -------
    dataset : MultiSubjectDataset
        Lazy; close it when done.
    data : MRIData-like or SFTData-like
        ``LazyMRIData`` of a volume group or ``LazySFTData`` of a
        streamline group.
    """
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject_id)
    groups = dataset.volume_groups + dataset.streamline_groups
    if group not in groups:
        dataset.close()
        raise DwiMLUserError(
            f"HDF5 file {hdf5_file}, subject '{subject_id}': no group "
            f"'{group}'; available groups: {', '.join(groups)}.")
    subset = next(s for s in (dataset.training_set, dataset.validation_set,
                              dataset.testing_set) if s.nb_subjects > 0)
    subject = subset.get_subject(0)
    if group in dataset.volume_groups:
        return dataset, subject.mri_data_list[
            dataset.volume_groups.index(group)]
    return dataset, subject.sft_data_list[
        dataset.streamline_groups.index(group)]


def volume_to_nifti(volume):
    """A NIfTI image of a stored volume: float32, its stored affine.

    A volume of one feature is 3-D, as its source most likely was.
    """
    data = volume.data
    if data.shape[-1] == 1:
        data = data[..., 0]
    return scanner_image(data, volume.affine)


def save_connectivity_matrix(sft_data, out_path, where):
    """Save a streamline group's stored connectivity matrix (.npy, bool)."""
    connectivity = sft_data.connectivity
    if connectivity is None:
        raise DwiMLUserError(
            f"{where}: expected a stored connectivity matrix for a .npy "
            "output, found none (the group was created without "
            "connectivity keys).")
    save_npy(out_path, np.asarray(connectivity.matrix, dtype=bool))
    nodes = (f"{len(connectivity.matrix)} labels"
             if connectivity.nb_blocs is None
             else f"{' x '.join(map(str, connectivity.nb_blocs))} blocs")
    logger.info("Connectivity matrix %s, %s.", connectivity.matrix_type,
                nodes)


def save_streamline_group(sft_data, out_path):
    """Save a stored streamline group in the subject's space (RAS mm).

    Points are read in voxel space, corner origin, and converted through
    the group's affine; the data_per_streamline go along.
    """
    affine, dimensions = sft_data.space_attributes[:2]
    save_tractogram_atomic(sft_data.get_streamlines(), affine, dimensions,
                           out_path,
                           data_per_streamline=sft_data.data_per_streamline,
                           bbox_valid_check=False)


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_hdf5_extract_data.py."""
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    _check_extension(args.out_file, NIFTI_EXTENSIONS + TRACTOGRAM_EXTENSIONS
                     + MATRIX_EXTENSIONS, "group")
    check_output_free(args.out_file, args.overwrite)
    dataset, data = load_subject_group(args.hdf5_file, args.subject_id,
                                       args.group)
    try:
        if args.group in dataset.volume_groups:
            _check_extension(args.out_file, NIFTI_EXTENSIONS, "volume group")
            save_nifti_atomic(volume_to_nifti(data), args.out_file)
        elif extension_of(args.out_file) in MATRIX_EXTENSIONS:
            save_connectivity_matrix(
                data, args.out_file, f"HDF5 file {args.hdf5_file}, subject "
                f"'{args.subject_id}', group '{args.group}'")
        else:
            _check_extension(args.out_file, TRACTOGRAM_EXTENSIONS,
                             "streamline group")
            save_streamline_group(data, args.out_file)
    finally:
        dataset.close()
    print(f"Group '{args.group}' of subject '{args.subject_id}' written to "
          f"{args.out_file}.")


if __name__ == "__main__":
    main()
