"""Write files and folders under a temporary name, then rename them."""
import contextlib
import os
import shutil
import tempfile


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_file(path):
    """Yield a temporary path next to ``path``; rename it on success.

    An exception (or a kill) inside the block never leaves a partial file at
    ``path``: the temporary file is removed on error, and the rename is
    atomic on POSIX file systems.
    """
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp",
                                    dir=folder)
    os.close(fd)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


@contextlib.contextmanager
def atomic_output_folder(path):
    """Yield a temporary folder next to ``path``; swap it in on success.

    The previous folder at ``path`` stays complete until the new one is
    fully written, so a kill during the write leaves it loadable.
    """
    parent, name = os.path.split(os.path.abspath(path))
    tmp_path = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    os.chmod(tmp_path, 0o777 & ~_current_umask())
    old_path = os.path.join(parent, f".{name}.old")
    try:
        yield tmp_path
        if os.path.exists(path):
            if os.path.exists(old_path):
                shutil.rmtree(old_path)
            os.replace(path, old_path)
        os.replace(tmp_path, path)
        if os.path.exists(old_path):
            shutil.rmtree(old_path)
    finally:
        if os.path.exists(tmp_path):
            shutil.rmtree(tmp_path)


def existing_atomic_folder(path):
    """Return the folder to read for ``path`` written by atomic_output_folder.

    A kill between the two renames of :func:`atomic_output_folder` leaves
    only the previous version, under ``.NAME.old``: it is returned then.
    Returns None when neither exists.
    """
    if os.path.isdir(path):
        return path
    parent, name = os.path.split(os.path.abspath(path))
    old_path = os.path.join(parent, f".{name}.old")
    return old_path if os.path.isdir(old_path) else None
