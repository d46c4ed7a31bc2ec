"""Peak memory and time of points mode on a dataset far larger than one chunk.

Writes N points (default 2,000,000 in d = 32, float32: 256 MB of coordinates) drawn from a seeded mixture of 256
Gaussians to a Parquet file, chunk by chunk, then clusters them in a fresh subprocess with a float32 Lloyd model
(k = 256) through `kmeans_transformer.points.cluster_points`, streaming the file with pyarrow. The subprocess reports
its own peak resident memory (`getrusage(RUSAGE_SELF).ru_maxrss`), which the parent checks against
`getrusage(RUSAGE_CHILDREN)` once it has exited, and the time of each pass over the data.

    python benchmarks/points_memory.py                       # the recorded run (several minutes on 2 cores)
    python benchmarks/points_memory.py --num-points 200000   # a quick one

Not part of the test suite.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(path: Path, num_points: int, dim: int, components: int, seed: int, rows_per_group: int = 65536) -> None:
    """A mixture of `components` isotropic Gaussians (unit variance, centres of scale 10), written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(components, dim)).astype(np.float32)
    schema = pa.schema([(f"x{i:02d}", pa.float32()) for i in range(dim)])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, num_points, rows_per_group):
            rows = min(rows_per_group, num_points - start)
            points = centres[rng.integers(components, size=rows)] + rng.standard_normal((rows, dim), dtype=np.float32)
            writer.write_table(pa.table({name: points[:, i] for i, name in enumerate(schema.names)}, schema=schema))


def rss_mib() -> float:
    """The current resident memory of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stamp_iterations(model, clock=time.perf_counter) -> list[float]:
    """A list that gets the `clock` time (wall-clock by default) at the end of each of `model`'s iterations (each
    ends with one `finalize`, whichever engine runs it)."""
    stamps, finalize = [], model.finalize

    def timed_finalize(*args, **kwargs):
        new = finalize(*args, **kwargs)
        stamps.append(clock())
        return new

    model.finalize = timed_finalize
    return stamps


def child(path: str, clusters: int, iterations: int, chunk_size: int, report: str) -> None:
    """Run points mode on `path` and write the figures to `report` (JSON)."""
    import torch

    from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
    from kmeans_transformer.points import cluster_points

    import pyarrow.parquet as pq

    dim = len(pq.ParquetFile(path).schema_arrow.names)
    config = KMeansTransformerConfig(num_clusters=clusters, point_dim=dim, num_iterations=iterations)
    model = KMeansTransformerModel(config).eval()  # float32
    rss_before = rss_mib()
    stamps = stamp_iterations(model)
    start = time.perf_counter()
    result = cluster_points(model, path, chunk_size=chunk_size, progress=False)
    total = time.perf_counter() - start
    ends = [*stamps, time.perf_counter()]
    spans = [b - a for a, b in zip(ends, ends[1:])]
    figures = {
        "num_points": result.num_points,
        "dim": dim,
        "clusters": clusters,
        "hidden_size": config.hidden_size,
        "iterations": iterations,
        "chunk_size": chunk_size,
        "engine": model.engine(),
        "torch_threads": torch.get_num_threads(),
        "rss_after_imports_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": total,
        "validation_and_first_iteration_s": stamps[0] - start,
        "iteration_s": spans[:-1],
        "final_pass_s": spans[-1],
        "inertia": result.inertia,
        "smallest_cluster": int(result.cluster_sizes.min()),
        "largest_cluster": int(result.cluster_sizes.max()),
    }
    Path(report).write_text(json.dumps(figures))


def machine() -> dict:
    import datasets
    import pyarrow
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(int(memory) / 1024**2, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "pyarrow": pyarrow.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-points", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to write the Parquet file (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs=5, metavar=("PATH", "K", "T", "CHUNK", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, clusters, iterations, chunk_size, report = args.child
        child(path, int(clusters), int(iterations), int(chunk_size), report)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        path = Path(workdir) / "points.parquet"
        start = time.perf_counter()
        generate(path, args.num_points, args.dim, args.clusters, args.seed)
        generation_s = time.perf_counter() - start
        report = Path(workdir) / "report.json"
        command = [sys.executable, __file__, "--child", str(path), str(args.clusters), str(args.iterations),
                   str(args.chunk_size), str(report)]
        subprocess.run(command, check=True)
        children_peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        figures = json.loads(report.read_text())
        figures.update(
            file_mib=path.stat().st_size / 1024**2, generation_s=generation_s, children_peak_rss_mib=children_peak_mib,
            machine=machine(),
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    iterations = ", ".join(f"{t:.1f}" for t in figures["iteration_s"])
    print(f"points: {figures['num_points']:,} x {figures['dim']} float32 ({figures['file_mib']:.0f} MiB Parquet), "
          f"k = {figures['clusters']}, token width {figures['hidden_size']}, chunk {figures['chunk_size']}")
    print(f"peak RSS of the subprocess: {figures['peak_rss_mib']:.0f} MiB (RUSAGE_CHILDREN: "
          f"{figures['children_peak_rss_mib']:.0f} MiB; {figures['rss_after_imports_mib']:.0f} MiB after imports)")
    print(f"validation pass and first iteration {figures['validation_and_first_iteration_s']:.1f} s; other iterations "
          f"{iterations} s; final pass "
          f"{figures['final_pass_s']:.1f} s; total {figures['total_s']:.1f} s")
    print(f"machine: {figures['machine']}")


if __name__ == "__main__":
    main()
