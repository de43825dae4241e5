"""Assertions shared by the bad-input and corruption tests.

A user error must be one line ``PROG: error: MESSAGE``, exit status 2, no
traceback, and leave every file of the working folder as it was.
"""
import hashlib
import os
import re

import pytest


def tree_snapshot(root):
    """{relative path: sha256} of every file under ``root``."""
    snapshot = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                snapshot[os.path.relpath(path, root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return snapshot


def assert_user_error(main, argv, capsys, root, *expected):
    """Run ``main(argv)``; check a clean one-line error naming ``expected``.

    Returns the message (after ``PROG: error: ``).
    """
    before = tree_snapshot(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert raised.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.match(r"^\S+: error: (.+)$", lines[0])
    assert match, lines[0]
    message = match.group(1)
    for text in expected:
        assert str(text) in message, (text, message)
    assert tree_snapshot(root) == before, "files changed or left behind"
    return message


def truncate(path, fraction=0.6):
    """Keep the first ``fraction`` of a file's bytes."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])


def write_random_bytes(path, offset=None, nb_bytes=64, seed=0):
    """Overwrite ``nb_bytes`` at ``offset`` (default: the middle)."""
    size = os.path.getsize(path)
    offset = size // 2 if offset is None else offset
    noise = bytes(range(256)) * (nb_bytes // 256 + 1)
    noise = bytes((b + seed * 37 + 101) % 256 for b in noise[:nb_bytes])
    with open(path, "r+b") as f:
        f.seek(offset)
        original = f.read(nb_bytes)
        # Make sure every byte changes.
        noise = bytes(n if n != o else (n + 1) % 256
                      for n, o in zip(noise, original))
        f.seek(offset)
        f.write(noise)
