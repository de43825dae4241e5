#!/usr/bin/env python3
"""Benchmark one tracking step of a Transformer model: cached vs re-forward.

An UNTRAINED Transformer (seeded weights, eval mode, no gradients) tracks
``--nb_streamlines`` random walks together, as the BatchedTracker does:

- cached: ``forward_step`` point after point, the keys and values of the
  past kept in the cache; the cost of one tracking step once the
  streamlines are ``--lengths`` points long is the median of ``--repeats``
  steps from there;
- re-forward: what a model without a cache does at each step, ``forward``
  over the whole partial streamlines of that length.

Prints ms per step (wall, and CPU for the cached steps), the ratio of the
longest length's cached step to the shortest's (target: <= 1.5), and the
peak RSS after each part (the cached part runs first; peak RSS never
decreases).
"""
import argparse
import resource
import statistics
import time

import torch

from dwi_ml.models.transformer_layers import POSITION_ENCODINGS
from dwi_ml.models.transformers import (
    OriginalTransformerModel,
    TransformerSrcAndTgtModel,
    TransformerSrcOnlyModel,
)

MODEL_TYPES = {"transformer_original": OriginalTransformerModel,
               "transformer_src_tgt": TransformerSrcAndTgtModel,
               "transformer_src_only": TransformerSrcOnlyModel}


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_model(args):
    torch.manual_seed(0)
    kwargs = dict(d_model=args.d_model, nheads=args.nheads,
                  n_layers_e=args.n_layers, nb_previous_dirs=2,
                  max_len=max(args.lengths) + args.repeats + 1,
                  attention_window=getattr(args, "attention_window", None),
                  position_encoding=getattr(args, "position_encoding",
                                            "sinusoidal"))
    if args.model_type == "transformer_original":
        kwargs["n_layers_d"] = args.n_layers
    model = MODEL_TYPES[args.model_type]("bench", nb_features=args.nb_features,
                                         **kwargs)
    return model.to(args.device).eval()


def _random_walks(args, nb_points):
    generator = torch.Generator().manual_seed(0)
    points = 50 + torch.cumsum(torch.nn.functional.normalize(torch.randn(
        args.nb_streamlines, nb_points, 3, generator=generator), dim=2), 1)
    inputs = torch.randn(args.nb_streamlines, nb_points, args.nb_features,
                         generator=generator)
    return points.to(args.device), inputs.to(args.device)


def _synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_cached(model, args):
    """ms of one cached step at each length, wall and CPU: the medians of
    the repeats that start there (robust to other processes on shared
    cores; on one thread, CPU time is the steadier of the two)."""
    nb_steps = max(args.lengths) + args.repeats
    points, inputs = _random_walks(args, nb_steps)
    times = []
    cache = None
    with torch.no_grad():
        for t in range(nb_steps):
            _synchronize(args.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            # A list of views of the points so far, one per streamline (the
            # tracker passes one tensor of the last points instead).
            partial = points[:, :t + 1].unbind(0)
            _, cache = model.forward_step(inputs[:, t], partial, cache)
            _synchronize(args.device)
            times.append((time.perf_counter() - start,
                          time.process_time() - cpu_start))
    return {length: tuple(1000 * statistics.median(column) for column in zip(
        *times[length - 1:length - 1 + args.repeats]))
        for length in args.lengths}


def profile_steps(model, args):
    """Print torch.profiler's table (self CPU time per operator) of
    ``args.repeats`` cached steps from each of ``args.lengths``: which
    operators grow with the length."""
    from torch.profiler import ProfilerActivity, profile
    points, inputs = _random_walks(args, max(args.lengths) + args.repeats)
    cache = None
    done = 0

    def step(t, cache):
        return model.forward_step(inputs[:, t], points[:, :t + 1].unbind(0),
                                  cache)[1]

    with torch.no_grad():
        for length in args.lengths:
            for t in range(done, length - 1):
                cache = step(t, cache)
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for t in range(length - 1, length - 1 + args.repeats):
                    cache = step(t, cache)
            done = length - 1 + args.repeats
            print(f"{args.model_type}: {args.repeats} steps from length "
                  f"{length}")
            print(profiler.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=8))


def bench_select(model, args, fraction=0.01):
    """ms (CPU) to drop ``fraction`` of the streamlines from the cache
    (``select_hidden_states``, what the tracker does after a step where
    some stopped), at each length: the median of ``args.repeats`` selects,
    one after each step from that length. The dropped streamlines are gone
    for the following steps, as in tracking."""
    nb_steps = max(args.lengths) + args.repeats
    points, inputs = _random_walks(args, nb_steps)
    times = {}
    cache = None
    with torch.no_grad():
        for t in range(nb_steps):
            partial = points[:, :t + 1].unbind(0)
            _, cache = model.forward_step(inputs[:, t], partial, cache)
            if not any(length <= t + 1 < length + args.repeats
                       for length in args.lengths):
                continue
            keep = torch.ones(len(points), dtype=torch.bool)
            keep[::max(1, round(1 / fraction))] = False
            start = time.process_time()
            cache = model.select_hidden_states(cache, keep)
            times[t + 1] = 1000 * (time.process_time() - start)
            points, inputs = points[keep], inputs[keep]
    return {length: statistics.median(
        times[t] for t in range(length, length + args.repeats))
        for length in args.lengths}


def bench_full(model, args):
    """ms of one forward over the partial streamlines, at each length:
    (wall, CPU)."""
    results = {}
    with torch.no_grad():
        for length in args.lengths:
            points, inputs = _random_walks(args, length)
            streamlines, point_inputs = list(points.unbind(0)), list(
                inputs.unbind(0))
            model(point_inputs[:2], streamlines[:2])  # warm-up
            _synchronize(args.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            model(point_inputs, streamlines)
            _synchronize(args.device)
            results[length] = (1000 * (time.perf_counter() - start),
                               1000 * (time.process_time() - cpu_start))
    return results


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model_type", choices=sorted(MODEL_TYPES),
                        nargs="+", default=sorted(MODEL_TYPES))
    parser.add_argument("--nb_streamlines", type=int, default=1000)
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=(20, 100, 200))
    parser.add_argument("--repeats", type=int, default=5,
                        help="Cached steps timed from each length.")
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--nheads", type=int, default=4)
    parser.add_argument("--n_layers", type=int, default=2,
                        help="Encoder layers (and decoder layers).")
    parser.add_argument("--nb_features", type=int, default=45)
    parser.add_argument("--position_encoding", default="sinusoidal",
                        choices=POSITION_ENCODINGS,
                        help="Position encoding of the models (default: "
                             "sinusoidal).")
    parser.add_argument("--attention_window", type=int, default=None,
                        help="Attention window of the models (default: "
                             "none, every earlier point).")
    parser.add_argument("--no_full", action="store_true",
                        help="Skip the re-forward part.")
    parser.add_argument("--profile", action="store_true",
                        help="Only print the profiler's table of the "
                             "cached steps at each length (default: time "
                             "them).")
    parser.add_argument("--select", action="store_true",
                        help="Also time dropping 1%% of the streamlines "
                             "from the cache after a step (default: not "
                             "timed).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads. Small kernels on a "
                             "shared 2-core machine run 10-60x slower with "
                             "2 threads than with 1.")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.lengths = sorted(args.lengths)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}; {args.nb_streamlines} streamlines, "
          f"d_model {args.d_model}, {args.nheads} heads, {args.n_layers} "
          f"layers per stack, {args.nb_features} features")
    for model_type in args.model_type:
        args.model_type = model_type
        model = _make_model(args)
        if args.profile:
            profile_steps(model, args)
            continue
        cached = bench_cached(model, args)
        rss_cached = _peak_rss_mib()
        full = {} if args.no_full else bench_full(model, args)
        selects = bench_select(model, args) if args.select else {}
        print(f"{model_type} (peak RSS {rss_cached:.0f} MiB after the "
              f"cached steps, {_peak_rss_mib():.0f} MiB after re-forwards)")
        for length in args.lengths:
            wall, cpu = cached[length]
            full_text = (f", re-forward {full[length][0]:9.1f} ms (CPU "
                         f"{full[length][1]:9.1f} ms, "
                         f"{full[length][1] / cpu:6.1f}x the cached step)"
                         if full else "")
            if selects:
                full_text += f", select 99% {selects[length]:6.2f} ms CPU"
            print(f"  length {length:4d}: cached step {wall:7.2f} ms (CPU "
                  f"{cpu:7.2f} ms){full_text}")
        shortest, longest = cached[args.lengths[0]], cached[args.lengths[-1]]
        print(f"  cached step at {args.lengths[-1]} / at {args.lengths[0]}: "
              f"{longest[0] / shortest[0]:.2f} (CPU time: "
              f"{longest[1] / shortest[1]:.2f})")


if __name__ == "__main__":
    main()
