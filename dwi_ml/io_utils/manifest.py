"""Checksums of a saved folder, so that corruption is named, not guessed.

:func:`write_manifest` is called last inside an ``atomic_output_folder``
block: it records the sha256 of every file of the folder in
``MANIFEST.sha256`` (``sha256sum`` format, so ``sha256sum -c`` checks it
too). Loaders call :func:`verify_manifest` first: a file changed after the
save (random bytes, truncation) is then reported as corrupt by name,
instead of surfacing later as a strange error or a non-finite loss.
Folders written before manifests existed have none and are not checked.
"""
import hashlib
import os

from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError

MANIFEST_FILE = "MANIFEST.sha256"
_BLOCK_BYTES = 1024 ** 2


def file_sha256(path):
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_files(folder):
    """Paths of every file under ``folder``, relative, '/'-separated, sorted."""
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), folder)
            paths.append(relative.replace(os.sep, "/"))
    return sorted(p for p in paths if p != MANIFEST_FILE)


def write_manifest(folder):
    """Write ``folder/MANIFEST.sha256`` for every file under ``folder``.

    Call it once the folder is complete. The manifest is written under a
    temporary name and renamed.
    """
    lines = [f"{file_sha256(os.path.join(folder, path))}  {path}\n"
             for path in _folder_files(folder)]
    with atomic_output_file(os.path.join(folder, MANIFEST_FILE)) as tmp_path:
        with open(tmp_path, "w") as f:
            f.writelines(lines)


def read_manifest(folder):
    """``{relative path: sha256}`` of ``folder``'s manifest, or None if none.

    Raises
    ------
    DwiMLUserError
        A manifest that cannot be parsed (itself corrupt).
    """
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    entries = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                digest, name = line.rstrip("\n").split("  ", 1)
                if len(digest) != 64:
                    raise ValueError(digest)
                int(digest, 16)
                entries[name] = digest
    except (UnicodeDecodeError, ValueError):
        raise DwiMLUserError(
            f"'{path}': expected lines 'SHA256  FILE', found unreadable "
            "content; the folder is corrupt.") from None
    return entries


def verify_manifest(folder, names=None):
    """Check the files of ``folder`` against its manifest, if it has one.

    Parameters
    ----------
    folder : str
        A folder written with :func:`write_manifest` (or an old one without
        a manifest, which is not checked).
    names : iterable of str, optional
        Check only the entries whose path is one of these or lies under one
        of these (e.g. ``['model']``). Default: all.

    Returns
    -------
    bool
        True when a manifest was found and every checked file matches.

    Raises
    ------
    DwiMLUserError
        A listed file that is missing or whose sha256 differs.
    """
    entries = read_manifest(folder)
    if entries is None:
        return False
    for name, expected in entries.items():
        if names is not None and not any(
                name == n or name.startswith(n.rstrip("/") + "/")
                for n in names):
            continue
        path = os.path.join(folder, *name.split("/"))
        if not os.path.isfile(path):
            raise DwiMLUserError(
                f"'{path}': listed in {MANIFEST_FILE} but missing; the "
                "folder is incomplete.")
        found = file_sha256(path)
        if found != expected:
            raise DwiMLUserError(
                f"'{path}' is corrupt: its sha256 ({found[:12]}...) differs "
                f"from the one recorded in {MANIFEST_FILE} when it was "
                f"saved ({expected[:12]}...).")
    return True
