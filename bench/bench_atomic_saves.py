"""Time one checkpoint-sized atomic folder save, with and without fsync.

Usage: python bench/bench_atomic_saves.py FOLDER [--nb_saves N]

Writes a folder shaped like a small checkpoint (two 300 kB files and three
JSON files) under FOLDER with :func:`atomic_output_folder`, N times, with
the module's fsyncs and with them turned off, alternating, and prints the
mean time of a save.
"""
import argparse
import os
import tempfile
import time

from dwi_ml.io_utils import atomic
from dwi_ml.io_utils.atomic import atomic_output_folder, write_json_atomic

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--nb_saves", type=int, default=50)
    args = parser.parse_args()
    root = tempfile.mkdtemp(dir=args.folder)
    synced = (atomic._sync, atomic._sync_tree)
    unsynced = (lambda path: None, lambda path: None)
    for label in ("fsync", "none", "fsync", "none"):
        atomic._sync, atomic._sync_tree = synced if label == "fsync" \
            else unsynced
        save(root)
        start = time.perf_counter()
        for _ in range(args.nb_saves):
            save(root)
        elapsed = (time.perf_counter() - start) / args.nb_saves
        print(f"{label:6s} {elapsed * 1000:.2f} ms per save")
    atomic._sync, atomic._sync_tree = synced


if __name__ == "__main__":
    main()
