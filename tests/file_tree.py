"""Snapshots of a folder tree, to assert that a refused command lost nothing."""
import hashlib
import os
import shutil

import pytest


def snapshot(root):
    """Every path under ``root`` (hidden ones too) -> its content hash.

    Folders map to "<dir>" and links to their target, so a removed, added
    or changed file or folder anywhere changes the snapshot.
    """
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                tree[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                tree[key] = "<dir>"
            else:
                with open(path, "rb") as f:
                    tree[key] = hashlib.sha256(f.read()).hexdigest()
    return tree


def run_refused(main, argv, capsys):
    """Run a script's ``main(argv)``; return its one-line error message.

    Asserts exit status 2, one line on stderr in the ``PROG: error: ...``
    form, and nothing on stdout.
    """
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert ": error: " in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""
    return lines[0]


def without_write_permission():
    """Command prefix for a process that file modes bind.

    Root writes anywhere; without the capabilities that allow it (dropped
    from its bounding set by setpriv), it is bound by modes like any user.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv writes anywhere")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
