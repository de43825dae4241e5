#!/usr/bin/env python3
"""CPU time of Learn2track training steps on fixed batches, and its split.

Loads ``--nb_batches`` training batches of the issue-17 setting (batches of
100 streamlines, noise 0.1 mm, split 0.5, reverse 0.5; with
``--validation``: unsplit, no noise, forward only under ``no_grad``),
builds Learn2track (LSTM [64, 64], our defaults or, with
``--reference_settings``, the reference dwi_ml's: no previous direction, no
skip connection, no layer norm) and Adam as the trainer does, runs two
warm-up steps, then times ``--repeats`` passes over the same batches in
process CPU time (``time.process_time``: steady on a shared machine; run
it at 1 torch thread), and in wall time (the measure at 2 threads or more,
where spinning threads count as CPU time). A step is what the trainer
does: forward, loss, backward, gradient norm, optimizer step, zero_grad.

``--device cuda`` runs the steps on the GPU and times them in wall time,
synchronised at the end of each pass (``--stages`` is CPU only);
``--group_cost`` sets the fixed cost of a length group in padded points
(``dwi_ml.models.length_groups``; 'inf' pads the batch as one group).

``--stages`` prints the CPU time of each stage of a step (forward: previous
directions, length groups, each LSTM layer and layer norm, the direction
getter; loss; backward; gradient norm; optimizer), ``--profile`` the
``torch.profiler`` table of one pass (backward per operation).

``--lstm_only`` times the model's LSTM layers alone, forward and backward,
on random blocks of each batch's length groups (the shapes the step
runs), and prints their rate in GFLOP/s: the multiply-adds of the
LSTM's products (8 x units x (inputs + units) a padded point and layer
forward, twice that backward), the floor of a training step on this CPU,
beside the rate of a large matrix product on the same device.

    python bench/bench_learn2track_step.py /tmp/b17/syn.hdf5 --nb_batches 10 --repeats 3
    python bench/bench_learn2track_step.py FILE.hdf5 --device cuda --batch_size 1000 \
        --bf16 --profile
"""
import argparse
import collections
import time

import torch

from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import check_inputs_exist


def _load_batches(args):
    """The first ``nb_batches`` batches, inputs interpolated."""
    from bench_loading import _make_pipeline

    from dwi_ml.batching.dataloaders import make_dataloader

    augment = not args.validation
    args.split = args.reverse = 0.5 if augment else 0.
    args.noise = 0.1 if augment else 0.
    args.seed = 0
    _, sampler, loader = _make_pipeline(args, "none", lazy=False)
    batches = []
    for batch in make_dataloader(sampler, loader, "training"):
        if len(batches) == args.nb_batches:
            break
        batch = loader.prepare_batch(batch, "cpu")
        batches.append(tuple([t.to(args.device) for t in tensors] for tensors in (
            batch.inputs_list(), batch.input_streamlines(),
            batch.target_streamlines())))
    return batches


def _timed(times, name, function):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        result = function(*args, **kwargs)
        times[name] += time.process_time() - start
        return result
    return wrapper


def _time_stages(model, times):
    """Wrap the model's stages so that each adds its CPU time to ``times``."""
    model.compute_previous_dirs = _timed(times, "previous directions",
                                         model.compute_previous_dirs)
    model.count_predictions = _timed(times, "checks, prediction counts",
                                     model.count_predictions)
    try:
        from dwi_ml.models import length_groups
        groups = length_groups.PaddedGroups
        for name in ("__init__", "pad", "unpad"):
            setattr(groups, name, _timed(times, f"length groups: {name}",
                                         getattr(groups, name)))
    except ImportError:  # a tree before length_groups
        pass
    for i, (rnn, post) in enumerate(zip(model.rnn.rnn_layers,
                                        model.rnn.post_layers)):
        rnn.forward = _timed(times, f"LSTM layer {i} forward", rnn.forward)
        post.forward = _timed(times, f"layer norm {i} forward", post.forward)
    model.direction_getter.forward = _timed(
        times, "direction getter forward", model.direction_getter.forward)


def _make_step(model, optimizer, times, validation, bf16, device_type):
    def stage(name, function, *args):
        start = time.process_time()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16
                            and name in ("forward (all)", "loss")):
            result = function(*args)
        times[name] += time.process_time() - start
        return result

    def train_step(batch):
        outputs = stage("forward (all)", model, batch[0], batch[1])
        loss, _ = stage("loss", model.compute_loss, outputs, batch[2])
        stage("backward", loss.backward)
        parameters = [p for p in model.parameters() if p.grad is not None]
        stage("gradient norm", torch.nn.utils.clip_grad_norm_, parameters,
              float("inf"))
        stage("optimizer step", optimizer.step)
        stage("zero_grad", optimizer.zero_grad, True)
        return float(loss.detach())

    def valid_step(batch):
        with torch.no_grad():
            outputs = stage("forward (all)", model, batch[0], batch[1])
            return float(stage("loss", model.compute_loss, outputs,
                               batch[2])[0])

    return valid_step if validation else train_step


def _lstm_only_step(model, batches, args):
    """A step that runs the model's LSTM layers alone, forward and
    backward, on random blocks of the batch's length-group shapes; prints
    the shapes' padded points and the LSTM's FLOPs a batch."""
    from dwi_ml.models.length_groups import PaddedGroups
    generator = torch.Generator().manual_seed(0)
    blocks = {}
    padded = points = 0
    for batch in batches:
        counts = torch.tensor([len(s) for s in batch[0]])
        shapes = PaddedGroups(counts).shapes
        blocks[id(batch)] = [torch.randn(
            length, width, model.rnn.rnn_layers[0].input_size,
            generator=generator, device=args.device)
            for length, width in shapes]
        padded += sum(length * width for length, width in shapes)
        points += int(counts.sum())
    flops = 3 * sum(8 * rnn.hidden_size * (rnn.input_size + rnn.hidden_size)
                    for rnn in model.rnn.rnn_layers)
    gflop = flops * padded / len(batches) / 1e9
    print(f"LSTM only: {points / len(batches):.0f} points, "
          f"{padded / len(batches):.0f} padded points a batch "
          f"({padded / points:.3f}x), {flops / 1e3:.1f} kFLOP a padded "
          f"point forward and backward: {gflop:.3f} GFLOP a batch")

    def lstm_step(batch):
        total = 0.
        for block in blocks[id(batch)]:
            outputs = model.rnn(block)[0]
            outputs.sum().backward()
            total += float(outputs.detach()[0, 0, 0])
        model.zero_grad(set_to_none=True)
        return total
    lstm_step.gflop = gflop
    return lstm_step


def _matmul_rate(device, clock, synchronize, size=2048, repeats=10):
    """GFLOP/s of a float32 ``size`` x ``size`` matrix product: the
    CPU's (or GPU's) rate on large products, to compare the LSTM's with."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device)
            for _ in range(2))
    a @ b
    synchronize()
    start = clock()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size ** 3 * repeats / (clock() - start) / 1e9


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hdf5_file", help="HDF5 of the issue-17 data.")
    parser.add_argument("--input_group", default="input",
                        help="Input volume group (default: input).")
    parser.add_argument("--streamline_group", default="streamlines",
                        help="Streamline group (default: streamlines).")
    parser.add_argument("--batch_size", type=int, default=100,
                        help="Streamlines per batch (default: 100).")
    parser.add_argument("--nb_batches", type=int, default=10,
                        help="Batches loaded and timed (default: 10).")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Timed passes over them (default: 3).")
    parser.add_argument("--nb_threads", type=int, default=1,
                        help="torch threads (default: 1).")
    parser.add_argument("--reference_settings", action="store_true",
                        help="The reference dwi_ml's model settings: 0 "
                             "previous directions, no skip connection, no "
                             "layer norm (default: ours, 2, with both).")
    parser.add_argument("--validation", action="store_true",
                        help="Validation batches and steps (unsplit, no "
                             "augmentation, forward and loss only).")
    parser.add_argument("--bf16", action="store_true",
                        help="Autocast the forward pass and loss to "
                             "bfloat16, as --mixed_precision bf16.")
    parser.add_argument("--device", default="cpu",
                        help="'cpu' or 'cuda' (default: cpu).")
    parser.add_argument("--group_cost", type=float,
                        help="Fixed cost of a length group, in padded "
                             "points ('inf': one group; default: the "
                             "model's).")
    parser.add_argument("--stages", action="store_true",
                        help="Print the CPU time of each stage.")
    parser.add_argument("--profile", action="store_true",
                        help="Print torch.profiler's table of one pass.")
    parser.add_argument("--lstm_only", action="store_true",
                        help="Time the LSTM layers alone on the batches' "
                             "length groups, with their GFLOP/s.")
    args = parser.parse_args(argv)
    check_inputs_exist(args.hdf5_file)
    torch.set_num_threads(args.nb_threads)
    on_gpu = args.device.startswith("cuda")
    if on_gpu and args.stages:
        parser.error("--stages: CPU only (it times each stage in CPU time)")
    if args.lstm_only and (args.validation or args.stages or args.bf16):
        parser.error("--lstm_only: a forward and backward in float32, "
                     "without --validation, --stages or --bf16")
    if args.group_cost is not None:
        from dwi_ml.models import length_groups
        length_groups.default_group_cost = lambda device=None: args.group_cost

    from dwi_ml.models.learn2track import Learn2TrackModel
    from dwi_ml.training.optimizers import create_optimizer

    batches = _load_batches(args)
    settings = (dict(nb_previous_dirs=0, use_skip_connection=False,
                     use_layer_norm=False) if args.reference_settings
                else dict(nb_previous_dirs=2))
    torch.manual_seed(0)
    model = Learn2TrackModel("bench", batches[0][0][0].shape[1],
                             rnn_layer_sizes=[64, 64], **settings).to(args.device)
    model.train(not args.validation)
    optimizer = create_optimizer(model.parameters(), "Adam", 0.005)
    times = collections.defaultdict(float)
    if args.stages:
        _time_stages(model, times)
    step = _make_step(model, optimizer, times, args.validation, args.bf16,
                      torch.device(args.device).type)
    if args.lstm_only:
        step = _lstm_only_step(model, batches, args)
    # On the GPU a pass is timed in wall time, synchronised at its end.
    clock = time.perf_counter if on_gpu else time.process_time

    def synchronize():
        if on_gpu:
            torch.cuda.synchronize()
    for batch in batches[:2]:
        step(batch)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities) as profiler:
            for batch in batches:
                step(batch)
            synchronize()
        print(profiler.key_averages().table(
            sort_by="self_cuda_time_total" if on_gpu
            else "self_cpu_time_total", row_limit=30))
    times.clear()
    passes, walls = [], []
    for _ in range(args.repeats):
        synchronize()
        start, wall_start = clock(), time.perf_counter()
        for batch in batches:
            loss = step(batch)
        synchronize()
        passes.append(clock() - start)
        walls.append(time.perf_counter() - wall_start)
    nb_points = sum(sum(len(s) for s in batch[1]) for batch in batches)
    kind = ("LSTM layers only" if args.lstm_only else "validation step"
            if args.validation else "training step")
    print(f"{kind}, "
          f"{'reference' if args.reference_settings else 'our'} settings, "
          f"{args.nb_threads} thread(s), {args.device} "
          f"{'bf16' if args.bf16 else 'fp32'}, group cost "
          f"{args.group_cost if args.group_cost is not None else 'default'}, "
          f"{nb_points // len(batches)} points a batch: "
          f"{'wall' if on_gpu else 'CPU'} ms a batch "
          + " ".join(f"{1000 * t / len(batches):.1f}" for t in passes)
          + ("" if on_gpu else "; wall ms a batch " + " ".join(
              f"{1000 * t / len(batches):.1f}" for t in walls))
          + f" (last loss {loss:.6g})")
    if args.lstm_only:
        print("LSTM only, GFLOP/s " + " ".join(
            f"{step.gflop * len(batches) / t:.0f}"
            for t in (walls if args.nb_threads > 1 or on_gpu else passes))
            + f"; a 2048 x 2048 matrix product, GFLOP/s "
            f"{_matmul_rate(args.device, clock, synchronize):.0f}")
    if args.stages:
        # Nested: the forward's parts are inside "forward (all)".
        nb_steps = len(batches) * len(passes)
        for name, seconds in times.items():
            print(f"  {name:32s} {1000 * seconds / nb_steps:7.1f} ms "
                  f"{100 * seconds / sum(passes):5.1f} %")

if __name__ == "__main__":
    main()
