"""Time one checkpoint-sized atomic folder save, with and without fsync.

Usage: python bench/bench_atomic_saves.py FOLDER [--nb_saves N]

Writes a folder shaped like a small checkpoint (two 300 kB files and three
JSON files) under FOLDER with :func:`atomic_output_folder`, N times, with
the module's fsyncs and with them turned off, alternating, and prints the
mean time of a save. The saves go to a temporary folder in FOLDER (on
FOLDER's disk, which is what is timed), removed at the end.
"""
import argparse
import os
import shutil
import tempfile
import time

from dwi_ml.io_utils import atomic
from dwi_ml.io_utils.atomic import atomic_output_folder, write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point

BLOB = os.urandom(300_000)


def save(root):
    with atomic_output_folder(os.path.join(root, "checkpoint")) as tmp:
        os.makedirs(os.path.join(tmp, "model"))
        for name in ("model/model_state.pt", "checkpoint_state.pt"):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(BLOB)
        for name in ("model/parameters.json", "position.json",
                     "MANIFEST.sha256"):
            write_json_atomic(os.path.join(tmp, name), {"a": 1})


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="An existing folder, on the disk to "
                                       "time.")
    parser.add_argument("--nb_saves", type=int, default=50)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        raise DwiMLUserError(f"folder '{args.folder}': expected an existing "
                             "folder, found "
                             + ("a file." if os.path.exists(args.folder)
                                else "nothing."))
    root = tempfile.mkdtemp(prefix="bench_atomic_saves_", dir=args.folder)
    synced = (atomic._sync, atomic._sync_tree)
    unsynced = (lambda path: None, lambda path: None)
    try:
        for label in ("fsync", "none", "fsync", "none"):
            atomic._sync, atomic._sync_tree = synced if label == "fsync" \
                else unsynced
            save(root)
            start = time.perf_counter()
            for _ in range(args.nb_saves):
                save(root)
            elapsed = (time.perf_counter() - start) / args.nb_saves
            print(f"{label:6s} {elapsed * 1000:.2f} ms per save")
    finally:
        atomic._sync, atomic._sync_tree = synced
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
