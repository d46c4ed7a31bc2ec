"""Time per iteration of points mode against the in-memory fast path, its peak memory, and two processes against one.

Writes N points (default 2,000,000 in d = 32, float32, a seeded mixture of k Gaussians; `points_memory.generate`) to
a Parquet file and runs, each in a fresh subprocess (so that each reports its own peak resident memory):

- `memory`: the whole file read into one float32 array, and one `model(points, centroids)` call (the compact engine)
  with 1 and with T + 1 iterations (the faster of two calls each); time per iteration = the difference / T;
- `points`: `cluster_points` on the file (float32 model, `chunk_size` rows per chunk, Parquet streamed; the first
  iteration also writes the decoded chunks to the scratch file that later ones read, `cache="disk"`), T iterations;
  time per iteration = the time between consecutive `model.finalize` calls (each iteration ends with one), i.e.
  iterations 2 to T;
- `points-1`, `points-2`: the same on one process with one thread, and on two `torchrun` gloo processes with one
  thread each (rank 0's times).

Each run also reports the CPU time of its process per iteration (`time.process_time`, every thread of the process,
the reading thread of points mode included), measured as the wall-clock time is: on a machine shared with other jobs
it varies less with their load than the wall-clock time does.

    nice python benchmarks/points_speed.py --json points_speed.json   # the recorded run
    python benchmarks/points_speed.py --quick                         # 200,000 points, seconds
    python benchmarks/points_speed.py --variant soft --runs memory-1-thread points-1-process

`--variant` picks the model's variant (gmm starts from unit variances and equal weights, given to both modes),
`--config` other settings of its config as JSON (`'{"reg_covar": 1e-6}'`: at k = 256 a gmm component otherwise
collapses onto one point), `--runs` picks some of the five runs (the ratios need their two runs).

Not part of the test suite.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from points_memory import generate, machine, stamp_iterations  # noqa: E402


RUNS = ("memory", "points", "memory-1-thread", "points-1-process", "points-2-processes")


def _model(clusters: int, dim: int, iterations: int, variant: str, options: dict):
    from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel

    config = KMeansTransformerConfig(
        num_clusters=clusters, point_dim=dim, num_iterations=iterations, variant=variant, **options
    )
    return KMeansTransformerModel(config).eval()  # float32


def _initial_state(model) -> dict:
    """The carried state both modes start from: unit variances and equal weights (gmm), else nothing."""
    import numpy as np

    k = model.config.num_clusters
    values = {"variances": np.ones(k), "weights": np.full(k, 1.0 / k)}
    return {name: values[name] for name in model.config.variant_spec.state_names}


def child(mode: str, path: str, clusters: int, iterations: int, chunk_size: int, variant: str, options: dict,
          report: str) -> None:
    """Run one measurement on `path` and write its figures to `report` (JSON; rank 0 only when distributed)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    torch.set_grad_enabled(False)
    if "POINTS_SPEED_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["POINTS_SPEED_THREADS"]))
    dim = len(pq.ParquetFile(path).schema_arrow.names)
    model = _model(clusters, dim, iterations, variant, options)
    state = _initial_state(model)
    figures, is_main = {"mode": mode, "variant": variant, "torch_threads": torch.get_num_threads()}, True
    if mode == "memory":
        table = pq.read_table(path)
        points = torch.from_numpy(np.column_stack([column.to_numpy() for column in table.columns]))[None]
        del table
        initial = points[:, :clusters].clone()
        times = {1: float("inf"), iterations + 1: float("inf")}
        cpu_times = dict(times)
        for count in [1, iterations + 1] * 2:  # the faster of two calls each: the machine may be shared
            start, cpu_start = time.perf_counter(), time.process_time()
            output = model(points, initial, num_iterations=count,
                           **{name: torch.from_numpy(value).float() for name, value in state.items()})
            times[count] = min(times[count], time.perf_counter() - start)
            cpu_times[count] = min(cpu_times[count], time.process_time() - cpu_start)
        figures["engine"] = model.engine()
        figures["iteration_s"] = [(times[iterations + 1] - times[1]) / iterations]
        figures["iteration_cpu_s"] = [(cpu_times[iterations + 1] - cpu_times[1]) / iterations]
        figures["inertia"] = float(output.inertia[0])
    else:
        from accelerate import Accelerator

        from kmeans_transformer.points import cluster_points

        accelerator = Accelerator(cpu=True)
        is_main = accelerator.is_main_process
        stamps, cpu_stamps = stamp_iterations(model), stamp_iterations(model, time.process_time)
        start = time.perf_counter()
        result = cluster_points(model, path, chunk_size=chunk_size, accelerator=accelerator, progress=False,
                                initial_state=state or None)
        figures["total_s"] = time.perf_counter() - start
        figures["iteration_s"] = [b - a for a, b in zip(stamps, stamps[1:])]
        figures["iteration_cpu_s"] = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
        figures["processes"] = accelerator.num_processes
        figures["engine"] = model.engine()
        figures["inertia"] = result.inertia
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if is_main:
        Path(report).write_text(json.dumps(figures))


def run(mode: str, path: Path, args, workdir: Path, processes: int = 1, threads: int | None = None) -> dict:
    report = workdir / f"{mode}-{processes}-{threads}.json"
    sizes = [str(args.clusters), str(args.iterations), str(args.chunk_size), args.variant, json.dumps(args.config)]
    arguments = ["--child", mode, str(path), *sizes, str(report)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["POINTS_SPEED_THREADS"] = str(threads)
    if processes == 1:
        command = [sys.executable, __file__, *arguments]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", "--nproc_per_node", str(processes), __file__, *arguments]
    subprocess.run(command, check=True, env=env)
    figures = json.loads(report.read_text())
    for name in ("iteration_s", "iteration_cpu_s"):
        figures[f"median_{name}"] = sorted(figures[name])[len(figures[name]) // 2]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-points", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 points")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="lloyd", help="the model's variant (one that points mode runs)")
    parser.add_argument("--config", type=json.loads, default={},
                        help='other settings of the model\'s config, as JSON (e.g. \'{"reg_covar": 1e-6}\' for gmm)')
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="the runs to make (default all)")
    parser.add_argument("--workdir", help="where to write the Parquet file (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, clusters, iterations, chunk_size, variant, options, report = args.child
        child(mode, path, int(clusters), int(iterations), int(chunk_size), variant, json.loads(options), report)
        return
    if args.quick:
        args.num_points = 200_000

    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        workdir = Path(workdir)
        path = workdir / "points.parquet"
        generate(path, args.num_points, args.dim, args.clusters, args.seed)
        settings = {
            "memory": ("memory", 1, None), "points": ("points", 1, None), "memory-1-thread": ("memory", 1, 1),
            "points-1-process": ("points", 1, 1), "points-2-processes": ("points", 2, 1),
        }
        runs = {}
        for name in RUNS:
            if name in args.runs:
                mode, processes, threads = settings[name]
                runs[name] = run(mode, path, args, workdir, processes=processes, threads=threads)
        file_mib = path.stat().st_size / 1024**2
    ratios = {
        "points_over_memory": ("points", "memory"),
        "points_over_memory_1_thread": ("points-1-process", "memory-1-thread"),
        "two_over_one_process": ("points-2-processes", "points-1-process"),
    }
    cpu_ratios = {"points_over_memory_1_thread_cpu": ("points-1-process", "memory-1-thread")}
    figures = {
        "num_points": args.num_points, "dim": args.dim, "clusters": args.clusters, "iterations": args.iterations,
        "chunk_size": args.chunk_size, "variant": args.variant, "config": args.config, "file_mib": file_mib,
        "runs": runs,
        **{
            name: runs[top]["median_iteration_s"] / runs[bottom]["median_iteration_s"]
            for name, (top, bottom) in ratios.items() if top in runs and bottom in runs
        },
        **{
            name: runs[top]["median_iteration_cpu_s"] / runs[bottom]["median_iteration_cpu_s"]
            for name, (top, bottom) in cpu_ratios.items() if top in runs and bottom in runs
        },
        "load_average": os.getloadavg(),
        "machine": machine(),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{args.num_points:,} x {args.dim} float32 ({file_mib:.0f} MiB Parquet), k = {args.clusters}, "
          f"chunk {args.chunk_size}, {args.variant}")
    for name, run_figures in runs.items():
        times = ", ".join(f"{t:.3f}" for t in run_figures["iteration_s"])
        print(f"{name:>20}: {run_figures['median_iteration_s']:.3f} s per iteration ({times}), CPU "
              f"{run_figures['median_iteration_cpu_s']:.3f} s, peak RSS "
              f"{run_figures['peak_rss_mib']:.0f} MiB, {run_figures['torch_threads']} thread(s), "
              f"engine {run_figures['engine']}")
    for name in [*ratios, *cpu_ratios]:
        if name in figures:
            print(f"{name.replace('_', ' ')}: {figures[name]:.2f}")
    print(f"load average {figures['load_average']}; machine: {figures['machine']}")


if __name__ == "__main__":
    main()
