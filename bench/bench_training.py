"""Training throughput of Learn2track: points/s, data waiting, peak memory.

Trains for ``--epochs`` epochs (2 by default) on a benchmark-size synthetic
dataset (3 training subjects x N streamlines, built once in FOLDER, with
``--nb_processes`` subjects made at once) with each number of DataLoader workers of
``--workers``, each case in its own process. "Data waiting" is the time the
loop spends between the end of one batch and the start of the next (waiting
on the DataLoader), as a share of the whole training time. On CUDA the
inputs are interpolated on the GPU in the main process (the loader's
default there); on CPU they are interpolated in the collate step (in the
workers, or in the main process with 0 workers) whatever
``--interpolation``. ``--mixed_precision bf16`` autocasts the forward pass
(on CPU too). Gradients are clipped as ``--clip_grad`` says: 'none' by
default, as when the figures of bench/README.md were taken (the training
script clips at 1.0 by default since 2026-12-02).

The experiments ``bench_w{N}`` in FOLDER are replaced at each run (said
in the output). "peak RSS" is the case's main process; "worker RSS" the
largest of its DataLoader workers (separate processes).

    python bench/bench_training.py /tmp/bench_training --nb_streamlines 5000
    python bench/bench_training.py /tmp/bench_training --device cuda \
        --mixed_precision bf16 --workers 0 4
    # one epoch of 1M streamlines (its data: 5 x 333 334 streamlines, ~5 GB)
    python bench/bench_training.py /tmp/b1m --device cuda \
        --nb_streamlines 333334 --batch_size 1000 --rnn_layer_sizes 64 64 \
        --workers 8 --epochs 1 --nb_processes 5
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.run_paths import script_run
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.trainer_args import clip_grad_value

HERE = os.path.abspath(__file__)


class DataWaitTimer(Callback):
    """Measures, per training batch, the time spent waiting for data."""

    def __init__(self):
        self.wait = 0.0
        self.total = 0.0
        self.valid = 0.0
        self.nb_streamlines = 0
        self.nb_points = 0
        self._last_end = None
        self._epoch_start = None

    def on_epoch_start(self, trainer, epoch):
        self._last_end = self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, batch):
        self.wait += time.perf_counter() - self._last_end
        self.nb_streamlines += batch.nb_streamlines
        self.nb_points += len(batch.target_points)

    def on_train_batch_end(self, trainer, batch, outputs):
        self._last_end = time.perf_counter()

    def on_validation_batch_end(self, trainer, batch, outputs):
        pass

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        self.total += epoch_logs["train_time"]
        self.valid += epoch_logs["valid_time"]


def make_data(folder, nb_streamlines, nb_processes=1):
    """Build (once) the synthetic subjects and the HDF5; return its path."""
    from dwi_ml.data.hdf5.creation import create_hdf5_dataset
    from dwi_ml.data.synthetic import make_synthetic_dataset
    hdf5_file = os.path.join(folder, f"bench_{nb_streamlines}.hdf5")
    if not os.path.exists(hdf5_file):
        start = time.perf_counter()
        paths = make_synthetic_dataset(
            os.path.join(folder, f"synthetic_{nb_streamlines}"), nb_subjects=5,
            nb_streamlines=nb_streamlines, shape=(48, 48, 32), seed=0,
            overwrite=True, nb_processes=nb_processes)
        made = time.perf_counter()
        # 3 training subjects, as in the reference comparison.
        create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                            hdf5_file, paths.config,
                            ["subj-01", "subj-02", "subj-03"], ["subj-04"],
                            ["subj-05"])
        print(f"data built: synthetic subjects {made - start:.0f} s, HDF5 "
              f"{time.perf_counter() - made:.0f} s", file=sys.stderr)
    return hdf5_file


def _interpolate_in_workers():
    """Make the loader interpolate in the collate step (workers, CPU) on
    every device, as it does on CPU; on CUDA it otherwise interpolates on
    the GPU in the main process."""
    from dwi_ml.training import experiment_builder
    build_loader = experiment_builder.build_loader

    def build_cpu_interpolating_loader(dataset, loader_params, model, device):
        loader = build_loader(dataset, loader_params, model, device)
        loader.interpolation_device = None
        return loader
    experiment_builder.build_loader = build_cpu_interpolating_loader


def run_case(hdf5_file, nb_workers, args):
    """Train 2 epochs in this process; return the measures."""
    from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
    timer = DataWaitTimer()
    experiments = os.path.dirname(hdf5_file)
    train_args = build_parser().parse_args([
        experiments, f"bench_w{nb_workers}", hdf5_file, "input", "streamlines",
        "--max_epochs", str(args.epochs), "--nb_workers", str(nb_workers), "-f",
        "--device", args.device,
        "--clip_grad", "none" if args.clip_grad is None else str(args.clip_grad),
        *(["--mixed_precision", args.mixed_precision]
          if args.mixed_precision else []),
        "--batch_size_training", str(args.batch_size),
        "--batch_size_validation", str(args.batch_size),
        "--rnn_layer_sizes", *map(str, args.rnn_layer_sizes),
        "--nb_previous_dirs", "1", "--step_size", "1.0",
        "--noise_gaussian_size_forward", "0.1", "-v", "WARNING",
        *(["--split_ratio", "0.5", "--reverse_ratio", "0.5"] if args.augment
          else [])])
    if args.interpolation == "workers":
        _interpolate_in_workers()
    if args.device.startswith("cuda"):
        import torch
        # The cases run in one process: without a reset, each would report
        # the peak of all the cases before it.
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    with script_run():
        train_from_args(train_args, callbacks=[timer])
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    gpu_peak = None
    if args.device.startswith("cuda"):
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    return {"nb_workers": nb_workers,
            "streamlines_per_s": timer.nb_streamlines / timer.total,
            "points_per_s": timer.nb_points / timer.total,
            "gpu_peak_mib": gpu_peak,
            "epoch_train_s": timer.total / args.epochs,
            "epoch_valid_s": timer.valid / args.epochs,
            "data_wait_share": timer.wait / timer.total,
            "wall_s": wall,
            # Main process, all threads, all epochs with validation and setup.
            "cpu_s": cpu,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # The largest worker that has exited (workers end with training).
            "worker_rss_mib": (resource.getrusage(
                resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                if nb_workers else None)}


def _run_case(nb_workers):
    """Run one case in a child process; its measures."""
    done = subprocess.run(
        [sys.executable, HERE, *sys.argv[1:], "--_case", str(nb_workers)],
        capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        if done.returncode == 2:
            raise DwiMLUserError(lines[-1].split(": error: ", 1)[-1])
        sys.exit(f"bench_training.py: the case with {nb_workers} workers "
                 f"failed (exit status {done.returncode}):\n"
                 + "\n".join(lines[-20:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(value):
    return "N/A" if value is None else f"{value:.0f}"


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="Where the benchmark data is built.")
    parser.add_argument("--nb_streamlines", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--rnn_layer_sizes", type=int, nargs="+",
                        default=[100, 100])
    parser.add_argument("--augment", action="store_true",
                        help="Also split and reverse half of the streamlines "
                             "(more, shorter streamlines per batch).")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'.")
    parser.add_argument("--mixed_precision", choices=("bf16", "fp16"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader workers of each case.")
    parser.add_argument("--interpolation", choices=("default", "workers"),
                        default="default",
                        help="Where inputs are interpolated: 'default' is "
                             "the trainer's choice (on the GPU in the main "
                             "process on CUDA, in the collate step on CPU); "
                             "'workers' always in the collate step, on the "
                             "CPU (default: default).")
    parser.add_argument("--clip_grad", type=clip_grad_value, default=None,
                        metavar="NORM|none",
                        help="--clip_grad of the training. Default: none "
                             "(no clipping), as in bench/README.md's "
                             "figures; dwiml_train_model.py's own default "
                             "is 1.0 since 2026-12-02.")
    parser.add_argument("--epochs", type=int, default=2,
                        help="Epochs of each case (default: 2).")
    parser.add_argument("--nb_processes", type=int, default=1,
                        help="Subjects made at once when the data is built "
                             "(default: 1).")
    parser.add_argument("--_case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.nb_processes < 1:
        parser.error("--epochs and --nb_processes: expected at least 1, "
                     f"found {args.epochs} and {args.nb_processes}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.folder))):
        raise DwiMLUserError(f"folder '{args.folder}': its parent folder "
                             "does not exist.")
    os.makedirs(args.folder, exist_ok=True)
    with script_run():
        hdf5_file = make_data(args.folder, args.nb_streamlines,
                              args.nb_processes)
    if args._case is not None:
        print(json.dumps(run_case(hdf5_file, args._case, args)))
        return
    replaced = [name for name in (f"bench_w{n}" for n in args.workers)
                if os.path.isdir(os.path.join(args.folder, name))]
    if replaced:
        print(f"replacing the experiments {', '.join(replaced)} of "
              f"{args.folder} (they are this benchmark's own)")
    on_cpu = not args.device.startswith("cuda")
    where = ("in the collate step, on the CPU (on CPU 'default' and "
             "'workers' are the same)" if on_cpu else
             "on the GPU, main process" if args.interpolation == "default"
             else "in the collate step (workers), on the CPU")
    print(f"dataset: {hdf5_file} (3 training subjects x {args.nb_streamlines} "
          f"streamlines); model LSTM {args.rnn_layer_sizes}; batch "
          f"{args.batch_size} streamlines (training and validation); noise 0.1 mm"
          + ("; split 0.5, reverse 0.5" if args.augment else "")
          + f"; device {args.device} {args.mixed_precision or 'fp32'}"
          + f"; clip_grad {args.clip_grad or 'none'}"
          + f"; interpolation {where}")
    print("peak RSS: the case's main process; worker RSS: its largest "
          "DataLoader worker" + ("; GPU peak: N/A on CPU" if on_cpu else ""))
    print(f"{'workers':>7} {'streamlines/s':>14} {'points/s':>11} "
          f"{'epoch (s)':>10} {'valid (s)':>10} {'data wait':>10} {'peak RSS MiB':>13} "
          f"{'worker RSS MiB':>15} {'GPU peak MiB':>13} "
          f"{f'CPU s ({args.epochs} ep.)':>16}")
    for nb_workers in args.workers:
        result = _run_case(nb_workers)
        print(f"{nb_workers:>7} {result['streamlines_per_s']:>14.0f} "
              f"{result['points_per_s']:>11.0f} "
              f"{result['epoch_train_s']:>10.3f} "
              f"{result['epoch_valid_s']:>10.3f} "
              f"{100 * result['data_wait_share']:>9.1f}% "
              f"{result['peak_rss_mib']:>13.0f} "
              f"{_mib(result['worker_rss_mib']):>15} "
              f"{_mib(result['gpu_peak_mib']):>13} "
              f"{result['cpu_s']:>16.1f}")


if __name__ == "__main__":
    main()
