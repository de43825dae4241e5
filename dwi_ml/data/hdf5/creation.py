"""Create a dwi_ml HDF5 file: validate everything, then write atomically.

The run reads top to bottom:

1. check the options, the config, the subject lists and the output path;
2. check every subject's files and headers, then read every volume and
   connectivity file whole, one at a time, to check its data (truncated
   files, NaN or Inf) and discard it;
3. under a temporary name, write the root attrs, then each subject; each
   tractogram is read once, here, and checked as it is read (truncated
   files, NaN or Inf, streamlines outside the volume, dps keys);
4. rename the temporary file to the output path.

A failing or interrupted run never leaves anything at the output path: a
tractogram refused in step 3 removes the temporary file.
"""
import contextlib
import datetime
import json
import logging
import os

import h5py
from tqdm import tqdm

from dwi_ml.data.hdf5.config import load_groups_config
from dwi_ml.data.hdf5.connectivity import (
    load_group_connectivity,
    write_connectivity,
)
from dwi_ml.data.hdf5.subjects import check_subject_lists
from dwi_ml.data.hdf5.tractograms import load_streamline_group
from dwi_ml.data.hdf5.validation import (
    check_same_features,
    check_subject_data,
    check_subject_files,
)
from dwi_ml.data.hdf5.volumes import load_volume_group
from dwi_ml.data.hdf5.writer import (
    StreamlinePointsWriter,
    write_root_attrs,
    write_streamline_group,
    write_volume_group,
)
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.atomic import atomic_output_file, write_failures_named
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import (
    check_output_free,
    progress_bars_disabled,
    refuse_wrong_path_kind,
)

DATE_FORMAT = "%d %B %Y %X"  # the reference's format of data_and_time


def create_hdf5_dataset(dwi_ml_ready_folder, out_hdf5, groups_config,
                        training_subjs, validation_subjs, testing_subjs, *,
                        step_size=None, nb_points=None, compress=None,
                        remove_invalid=False, overwrite=False,
                        _date_time=None):
    """Create an HDF5 file from a dwi_ml_ready folder.

    Parameters
    ----------
    dwi_ml_ready_folder : str
        Folder with one sub-folder per subject.
    out_hdf5 : str
        Output file. Refused if it exists, unless ``overwrite``.
    groups_config : str, os.PathLike or dict
        The groups config: a JSON file or the parsed dict.
    training_subjs, validation_subjs, testing_subjs : list of str
        Subject IDs of each split; a list may be empty.
    step_size, nb_points, compress : float, int, float, optional
        At most one: the :class:`StreamlineFormat` of the stored
        streamlines (step in mm, points per streamline, or compression
        tolerance in mm).
    remove_invalid : bool
        Drop (and log the count of) streamlines with points outside the
        volume. Default: such streamlines are an error.
    overwrite : bool
        Replace an existing output.
    _date_time : str, optional
        Fixed ``data_and_time`` attr, for byte-identical outputs in tests.

    Returns
    -------
    dict of str to dict of str to int
        Number of streamlines removed, by subject then streamline group.

    Raises
    ------
    DwiMLUserError
        Any bad input, in one line naming the subject, group and file. The
        output path is left untouched.
    """
    streamline_format = StreamlineFormat(step_size, nb_points, compress)
    refuse_wrong_path_kind(dwi_ml_ready_folder, "dwi_ml_ready folder",
                           folder=True)
    if not os.path.isdir(dwi_ml_ready_folder):
        raise DwiMLUserError(
            f"dwi_ml_ready folder '{dwi_ml_ready_folder}' does not exist.")
    config = load_groups_config(groups_config)
    subjects = check_subject_lists(dwi_ml_ready_folder, training_subjs,
                                   validation_subjs, testing_subjs)
    check_output_free(out_hdf5, overwrite)
    all_files = [
        check_subject_files(os.path.join(dwi_ml_ready_folder, subject),
                            subject, config)
        for subject in subjects.all]
    check_same_features(all_files)
    for subject_files in tqdm(all_files, desc="Checking data",
                              unit="subject", disable=progress_bars_disabled()):
        check_subject_data(subject_files, config)
    date_time = _date_time or datetime.datetime.now().strftime(DATE_FORMAT)

    removed = {}
    with write_failures_named(
            "the HDF5 file", out_hdf5, "any file there before is kept: "
            "{remedy}, then run the command again"), \
            atomic_output_file(out_hdf5) as tmp_path, \
            _hdf5_for_writing(tmp_path) as hdf_file:
        write_root_attrs(hdf_file, subjects, json.dumps(config.raw),
                         date_time,
                         **streamline_format.as_dict())
        subjects_bar = tqdm(all_files, desc="Subjects", unit="subject",
                            disable=progress_bars_disabled())
        for subject_files in subjects_bar:
            # Names the subject being written: a slow one is then visible.
            subjects_bar.set_postfix_str(subject_files.subject)
            removed[subject_files.subject] = _write_subject(
                hdf_file, subject_files, config, streamline_format,
                remove_invalid)
    logging.info("Saved %d subjects in %s.", len(all_files), out_hdf5)
    return removed


@contextlib.contextmanager
def _hdf5_for_writing(path):
    """``h5py.File(path, "w")`` whose failed writes raise where they happen.

    Without a chunk cache (the writers write whole chunks), a full disk
    fails the write call itself; with one, it failed when HDF5 evicted the
    chunk later, inside h5py's object cleanup (tracebacks it ignores, then
    a segmentation fault at exit). After an error, the temporary file is
    emptied so that HDF5 can close it.
    """
    hdf_file = h5py.File(path, "w", rdcc_nbytes=0)
    try:
        yield hdf_file
    except BaseException:
        os.truncate(path, 0)
        with contextlib.suppress(OSError, RuntimeError):
            hdf_file.close()
        raise
    hdf_file.close()


def _write_subject(hdf_file, subject_files, config, streamline_format,
                   remove_invalid):
    """Write one subject's groups; return removals by streamline group."""
    subject = subject_files.subject
    logging.info("Processing subject %s.", subject)
    subject_group = hdf_file.create_group(subject)
    for group_config in config.volume_groups:
        files = subject_files.volume_groups[group_config.name]
        data = load_volume_group(group_config, files.files, files.mask_files,
                                 subject)
        write_volume_group(subject_group, group_config.name, data,
                           files.grid)
    removed = {}
    for group_config in config.streamline_groups:
        files = subject_files.streamline_groups[group_config.name]
        # Points go to the file as they are processed: no group-sized copy.
        group = subject_group.create_group(group_config.name)
        points = StreamlinePointsWriter(group)
        streamlines = load_streamline_group(
            group_config, files.files, files.reference, subject,
            streamline_format, write_points=points.append,
            remove_invalid=remove_invalid)
        write_streamline_group(group, streamlines, points)
        if group_config.connectivity is not None:
            write_connectivity(subject_group[group_config.name],
                               load_group_connectivity(group_config, files,
                                                       subject))
        removed[group_config.name] = streamlines.nb_removed
    return removed
