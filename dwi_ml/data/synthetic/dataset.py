"""Make a whole synthetic dataset: subjects, HDF5 config and subject lists."""
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from dwi_ml.data.synthetic.dwi_signal import make_gradient_table
from dwi_ml.data.synthetic.subject import centreline_margin_mm, make_subject
from dwi_ml.data.synthetic.writer import (
    CONFIG_FILE,
    SUBJECTS_FOLDER,
    split_subjects,
    subject_list_path,
    subject_paths,
    write_config,
    write_subject,
    write_subject_lists,
)
from dwi_ml.io_utils.atomic import atomic_output_folder
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import (
    check_output_folder,
    mark_output_folder,
    seal_output_folder,
)
from dwi_ml.io_utils.process_jobs import run_in_processes

MIN_NB_DIRECTIONS = 6  # a tensor needs six directions


@dataclass(frozen=True)
class SyntheticDatasetPaths:
    """What :func:`make_synthetic_dataset` wrote (absolute paths).

    Attributes
    ----------
    out_folder, config : str
    subject_lists : dict
        split name -> ``<split>_subjs.txt``.
    splits : dict
        split name -> list of subject IDs.
    subjects : dict
        subject ID -> :class:`dwi_ml.data.synthetic.writer.SubjectPaths`.
    """
    out_folder: str
    config: str
    subject_lists: dict
    splits: dict
    subjects: dict


def _label(name, as_options):
    """An argument as a message names it: the script's option
    (``--nb_processes``) or the function's argument (``'nb_processes'``)."""
    return f"--{name}" if as_options else repr(name)


def _check_arguments(nb_subjects, nb_streamlines, shape, voxel_size,
                     nb_bundles, nb_directions, seed, nb_processes,
                     as_options):
    def label(name):
        return _label(name, as_options)

    def check(condition, name, expected, found):
        if not condition:
            raise DwiMLUserError(f"argument {label(name)}: expected "
                                 f"{expected}, found {found}.")

    check(nb_subjects >= 1, "nb_subjects", "at least 1", nb_subjects)
    check(nb_bundles >= 1, "nb_bundles", "at least 1", nb_bundles)
    check(nb_streamlines >= nb_bundles, "nb_streamlines",
          f"at least {label('nb_bundles')} ({nb_bundles})", nb_streamlines)
    check(nb_directions >= MIN_NB_DIRECTIONS, "nb_directions",
          f"at least {MIN_NB_DIRECTIONS}", nb_directions)
    check(seed >= 0, "seed", "a non-negative integer", seed)
    check(nb_processes >= 1, "nb_processes", "at least 1", nb_processes)
    check(len(shape) == 3 and all(s >= 8 for s in shape), "shape",
          "3 sizes of at least 8 voxels", list(shape))
    check(len(voxel_size) == 3 and all(0 < v < np.inf for v in voxel_size),
          "voxel_size", "3 finite positive sizes in mm", list(voxel_size))
    inner_mm = (np.asarray(shape) * np.asarray(voxel_size)
                - 2 * centreline_margin_mm(shape, voxel_size))
    check(np.all(inner_mm > 0), "shape",
          "enough voxels to hold the bundles and a one-voxel margin",
          list(shape))


def _write_one_subject(folder, seeds, shape, voxel_size, nb_streamlines,
                       nb_bundles, gtab):
    """Make and write one subject (any process); its time in seconds."""
    start = time.perf_counter()
    subject = make_subject(shape, voxel_size, nb_streamlines, nb_bundles,
                           gtab, np.random.default_rng(list(seeds)))
    write_subject(subject_paths(folder, nb_bundles), subject, gtab)
    return time.perf_counter() - start


def make_synthetic_dataset(out_folder, nb_subjects=3, nb_streamlines=300,
                           shape=(24, 24, 16), voxel_size=(2.0, 2.5, 3.0),
                           nb_bundles=3, nb_directions=44, seed=0,
                           overwrite=False, nb_processes=1,
                           as_options=False):
    """Write a synthetic dwi_ml dataset that a model can learn to track from.

    Each subject ``subj-XX`` gets, in ``OUT_FOLDER/dwi_ml_ready/subj-XX/``:
    ``dwi.nii.gz`` (b=0 then ``nb_directions`` DWI volumes simulated from the
    local fibre directions), ``dwi.bval``/``dwi.bvec``, ``wm_mask.nii.gz``
    (voxels crossed by streamlines, dilated by one voxel) and
    ``bundles/bundle_XX.trk``. ``OUT_FOLDER`` also holds the HDF5 creation
    ``config.json`` and the three ``<split>_subjs.txt`` lists (see
    :func:`dwi_ml.data.synthetic.writer.split_subjects`).

    Subject ``i`` depends only on ``(seed, i)``: the same seed gives
    byte-identical files. The folder is written under a temporary name and
    swapped in at the end.

    Parameters
    ----------
    out_folder : str
        A new or empty folder, or (with ``overwrite``) a synthetic dataset
        written before; its parent must exist.
    nb_subjects : int
    nb_streamlines : int
        Streamlines per subject, over all bundles.
    shape : tuple of 3 int
        Volume size, voxels.
    voxel_size : tuple of 3 float
        Voxel size, mm. Anisotropic by default.
    nb_bundles : int
    nb_directions : int
        Diffusion-weighted volumes after the b=0 one.
    seed : int
    overwrite : bool
        Replace an existing synthetic dataset at ``out_folder``. Any other
        non-empty folder is refused (see
        :mod:`dwi_ml.io_utils.output_folders`).
    nb_processes : int
        Subjects made at once, each in its own process. The files are the
        same whatever this number.
    as_options : bool
        Name the arguments in error messages as the script's options
        (``--nb_processes``) rather than as this function's.

    Returns
    -------
    SyntheticDatasetPaths

    Raises
    ------
    DwiMLUserError
        On a bad argument, or an ``out_folder`` that may not be written.
    """
    shape = tuple(int(s) for s in shape)
    voxel_size = tuple(float(v) for v in voxel_size)
    _check_arguments(nb_subjects, nb_streamlines, shape, voxel_size,
                     nb_bundles, nb_directions, seed, nb_processes,
                     as_options)
    check_output_folder(out_folder, "synthetic_dataset", overwrite)

    out_folder = os.path.abspath(out_folder)
    width = max(2, len(str(nb_subjects)))
    subject_ids = [f"subj-{idx + 1:0{width}d}" for idx in range(nb_subjects)]
    splits = split_subjects(subject_ids)
    gtab = make_gradient_table(nb_directions)

    with atomic_output_folder(out_folder) as tmp_folder:
        jobs = [(os.path.join(tmp_folder, SUBJECTS_FOLDER, subject_id),
                 (seed, subject_idx), shape, voxel_size, nb_streamlines,
                 nb_bundles, gtab)
                for subject_idx, subject_id in enumerate(subject_ids)]
        nb_processes = min(nb_processes, nb_subjects)
        if nb_processes == 1:
            durations = map(_write_one_subject, *zip(*jobs))
        else:
            durations = run_in_processes(
                _write_one_subject, jobs, nb_processes, "a subject",
                _label("nb_processes", as_options))
        for subject_id, duration in zip(subject_ids, durations):
            logging.info("%s: %d streamlines written in %.1f s", subject_id,
                         nb_streamlines, duration)
        write_config(tmp_folder)
        write_subject_lists(tmp_folder, splits)
        mark_output_folder(tmp_folder, "synthetic_dataset")
        seal_output_folder(tmp_folder)
        # Again before the swap: what came there meanwhile is not lost.
        check_output_folder(out_folder, "synthetic_dataset", overwrite)

    return SyntheticDatasetPaths(
        out_folder=out_folder,
        config=os.path.join(out_folder, CONFIG_FILE),
        subject_lists={split: subject_list_path(out_folder, split)
                       for split in splits},
        splits=splits,
        subjects={subject_id: subject_paths(os.path.join(
            out_folder, SUBJECTS_FOLDER, subject_id), nb_bundles)
            for subject_id in subject_ids})
