"""The output folder of a bench script: new, or replaced with -f only
where it holds nothing but the script's own entries."""
import os

from dwi_ml.io_utils.atomic import remove_path
from dwi_ml.io_utils.errors import DwiMLUserError


def prepare_out(out, overwrite, own_entries):
    """Make ``out``, or with ``overwrite`` remove the script's entries.

    Parameters
    ----------
    out : str
        The output folder.
    overwrite : bool
        ``-f``: remove the entries of ``own_entries`` found there.
    own_entries : sequence of str
        What the script writes at the top of ``out``.

    Raises
    ------
    DwiMLUserError
        A missing parent, a file at ``out``, an existing folder without
        ``overwrite``, and (with or without it) a folder holding anything
        else than the script's entries.
    """
    if not os.path.lexists(out):
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise DwiMLUserError(f"out '{out}': its parent folder does not "
                                 "exist.")
        os.makedirs(out)
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise DwiMLUserError(f"out '{out}' is not a folder; expected a new "
                             "or an existing folder.")
    entries = os.listdir(out)
    if not entries:
        return
    foreign = sorted(set(entries) - set(own_entries))
    if foreign:
        raise DwiMLUserError(
            f"out '{out}': expected a new folder or one of this script's "
            f"({list(own_entries)}), found also {foreign}; refused with or "
            "without -f.")
    if not overwrite:
        raise DwiMLUserError(f"out '{out}' already exists; use -f to "
                             "replace what this script wrote there.")
    for name in entries:
        remove_path(os.path.join(out, name))
