"""
Per-iteration time of each variant the compact engine runs, on its compact engine and on its token engine, against
Lloyd's compact engine: `python benchmarks/compact_variants.py [--points 100000 --dim 32 --clusters 64]`. One thread;
the runs are interleaved (one of each in turn, `--rounds` times) so that a shared machine's load falls on all alike.
Prints a Markdown table with the machine, the date and the load average. k-medoids' token engine holds `n × n` tables
(not run past `--max-token-points`); its compact engine is compared with a compiled `O(Σ_j |S_j|^2 d)` loop as well:
`scipy.spatial.distance.cdist` within each cluster of the same labels, summed, and the first least cost taken.
"""

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.variants import VARIANTS


def seconds_per_iteration(model, points, iterations):
    """The time of `forward(num_iterations=iterations)` less that of `num_iterations=0`, per iteration."""
    model.config.num_iterations = iterations
    start = time.perf_counter()
    model(points, output_assignments=False)
    middle = time.perf_counter()
    model(points, num_iterations=0, output_assignments=False)
    return ((middle - start) - (time.perf_counter() - middle)) / iterations


def medoid_loop_seconds(model, points):
    """One medoid update by `cdist` within each cluster (labels from Lloyd's assignment to the first k points)."""
    from scipy.spatial.distance import cdist

    x = points[0].numpy()
    labels = model(points, num_iterations=0, output_assignments=False).labels[0].numpy()
    start = time.perf_counter()
    for j in range(model.config.num_clusters):
        members = x[labels == j]
        if len(members):
            members[cdist(members, members).sum(axis=1).argmin()]
    return time.perf_counter() - start


def processor() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=None, help="default: every variant the compact engine runs")
    parser.add_argument("--max-token-points", type=int, default=20_000, help="token engine of k-medoids only up to this n")
    parser.add_argument("--offset", type=float, default=0.0, help="added to every coordinate (data far from the origin)")
    parser.add_argument("--compact-only", action="store_true", help="time the compact engines alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    points = torch.randn(1, args.points, args.dim, generator=torch.Generator().manual_seed(0)) + args.offset
    runs = {}
    for name, spec in VARIANTS.items():
        if spec.compact and (name == "lloyd" or args.variants is None or name in args.variants):
            model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=args.clusters, point_dim=args.dim, variant=name))
            runs[(name, "compact")] = model
            if name != "lloyd" and not args.compact_only and (name != "kmedoids" or args.points <= args.max_token_points):
                runs[(name, "tokens")] = model
    times = {key: [] for key in runs}
    for model in runs.values():  # warm up: the compiled loops load, the weights' construction is cached
        model(points[:, :1000], num_iterations=0, output_assignments=False)
    load = os.getloadavg()
    for _ in range(args.rounds):
        for (name, engine), model in runs.items():
            model.config.fast_hardmax = engine == "compact"
            assert model.engine() == engine
            times[(name, engine)].append(seconds_per_iteration(model, points, args.iterations))
    if ("kmedoids", "compact") in runs:
        times[("kmedoids", "cdist loop")] = [medoid_loop_seconds(runs[("kmedoids", "compact")], points) for _ in range(args.rounds)]
    lloyd = statistics.median(times[("lloyd", "compact")])
    print(f"{processor()}, {os.cpu_count()} cores, 1 thread, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average {load[0]:.1f} (before) "
          f"{os.getloadavg()[0]:.1f} (after); n={args.points}, d={args.dim}, k={args.clusters}, offset {args.offset:g}, "
          f"{args.iterations} iterations, float32\n")
    print("| variant | engine | s / iteration (median of rounds) | × lloyd compact |")
    print("|---|---|---|---|")
    for (name, engine), values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {engine} | {median:.4f} | {median / lloyd:.2f} |")


if __name__ == "__main__":
    main()
