"""Subject lists of an HDF5 creation and the files of each subject."""
import glob
import os
from dataclasses import dataclass
from typing import Tuple

from dwi_ml.data.hdf5.layout import SPLITS
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.safe_load import read_text
from dwi_ml.io_utils.script_args import refuse_wrong_path_kind

ALL_FILES = "ALL"  # 'folder/ALL': the older reference's "every file in it"


@dataclass(frozen=True)
class SubjectLists:
    """The three splits, each sorted, and their sorted union ``all``."""
    training: Tuple[str, ...]
    validation: Tuple[str, ...]
    testing: Tuple[str, ...]

    @property
    def all(self):
        return tuple(sorted(self.training + self.validation + self.testing))

    def split(self, name):
        """Return the subjects of split ``name`` ('training', ...)."""
        return getattr(self, name)


def describe(subject, group=None, path=None, key=None):
    """Where an error happened: "subject 'S', group 'G', file 'F'".

    ``key``, the config entry that names the file when it is not the
    group's 'files' (e.g. 'std_mask'), is said before 'file'.
    """
    parts = [f"subject '{subject}'"]
    if group is not None:
        parts.append(f"group '{group}'")
    if path is not None:
        parts.append(f"{key} file '{path}'" if key else f"file '{path}'")
    return ", ".join(parts)


def one_line(error):
    """An exception's message on one line, to quote in a DwiMLUserError."""
    return " ".join(str(error).split())


def read_subjects_file(path):
    """Read subject IDs from a text file, separated by spaces or newlines.

    UTF-8 (or UTF-8 / UTF-16 with a byte-order mark); a pipe or
    ``/dev/null`` (an empty list) reads as a file.

    Raises
    ------
    DwiMLUserError
        When the file does not exist or is not text.
    """
    refuse_wrong_path_kind(path, "subject list")
    if not os.path.exists(path):
        raise DwiMLUserError(f"subject list '{path}' does not exist.")
    try:
        return read_text(path, "subject list").split()
    except UnicodeDecodeError:
        raise DwiMLUserError(
            f"subject list '{path}': expected text (subject IDs), found "
            "binary bytes; the file is corrupt or not a subject list.") \
            from None


def check_subject_lists(dwi_ml_ready_folder, training, validation, testing):
    """Check the three subject lists against the data folder.

    Parameters
    ----------
    dwi_ml_ready_folder : str
        Folder holding one sub-folder per subject.
    training, validation, testing : list of str, or str
        Subject IDs of each split (or one ID); a list may be empty.

    Returns
    -------
    SubjectLists

    Raises
    ------
    DwiMLUserError
        A subject listed twice (in one list or in two), an ID that cannot be
        an HDF5 group name, a subject without a folder, or no subject at all.
    """
    # One ID alone is a list of one (a string was a list of its letters).
    lists = dict(zip(SPLITS, ([subjects] if isinstance(subjects, str)
                              else list(subjects)
                              for subjects in (training, validation,
                                               testing))))
    seen = {}
    for split, subjects in lists.items():
        for subject in subjects:
            if not isinstance(subject, str) or not subject or "/" in subject:
                raise DwiMLUserError(
                    f"{split} subjects: {subject!r} is not a valid subject "
                    "ID (a non-empty folder name without '/').")
            if subject in seen:
                where = ("twice in the" if seen[subject] == split
                         else f"in the {seen[subject]} and the")
                raise DwiMLUserError(
                    f"subject '{subject}' is listed {where} {split} "
                    "subjects; each subject must appear once.")
            seen[subject] = split
    if not seen:
        raise DwiMLUserError(
            "no subject listed: the training, validation and testing lists "
            "are all empty.")
    for subject in sorted(seen):
        folder = os.path.join(dwi_ml_ready_folder, subject)
        if not os.path.isdir(folder):
            raise DwiMLUserError(
                f"subject '{subject}' (in the {seen[subject]} subjects) has "
                f"no folder '{folder}'.")
    return SubjectLists(*(tuple(sorted(lists[split])) for split in SPLITS))


def resolve_files(subject_folder, patterns, subject, group, key=None):
    """Expand a config's file patterns for one subject.

    Parameters
    ----------
    subject_folder : str
        The subject's folder; patterns are relative to it.
    patterns : sequence of str
        File names, possibly with ``*`` wildcards. ``folder/ALL`` (the older
        reference dwi_ml's form), when no file is named ALL, is
        ``folder/*``.
    subject, group : str
        Named in error messages.
    key : str or None
        The config entry that holds ``patterns`` when it is not 'files'
        (e.g. 'std_mask'), named in error messages.

    Returns
    -------
    list of str
        Full paths: patterns in config order, each wildcard's matches sorted.

    Raises
    ------
    DwiMLUserError
        A missing file, a folder, a wildcard matching no file, or a file
        matched twice.
    """
    paths = []
    for pattern in patterns:
        full = os.path.join(subject_folder, pattern)
        if os.path.basename(pattern) == ALL_FILES and not os.path.isfile(full):
            # The older reference dwi_ml's 'folder/ALL': every file in it.
            pattern = os.path.join(os.path.dirname(pattern), "*")
            full = os.path.join(subject_folder, pattern)
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(full) if os.path.isfile(p))
            if not matches:
                raise DwiMLUserError(
                    f"{describe(subject, group, full, key)}: the pattern "
                    "matches no file.")
            paths.extend(matches)
        elif os.path.isdir(full):
            raise DwiMLUserError(
                f"{describe(subject, group, full, key)}: expected a file, "
                f"found a folder; write '{os.path.join(pattern, '*')}' for "
                "all its files.")
        elif not os.path.isfile(full):
            raise DwiMLUserError(
                f"{describe(subject, group, full, key)}: file does not exist.")
        else:
            paths.append(full)
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise DwiMLUserError(
            f"{describe(subject, group, duplicates[0], key)}: the file is "
            "matched twice by the config's patterns; each file must appear "
            "once.")
    return paths
