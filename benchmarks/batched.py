"""Many small problems: the model's per-iteration time on a batch against a scikit-learn loop, torch-kmeans and
fast-pytorch-kmeans, measured side by side and interleaved in one run.

The data, the initial centroids and the runners are those of `benchmarks/speed.py` (the same float32 Gaussian
mixtures, `KMeans(init=c0, n_init=1, tol=0)` per problem for scikit-learn, one batched call for torch-kmeans). Each
library gets one untimed warm-up run, then `--rounds` rounds in which every library runs `--iterations` iterations
once, in turn (so a change in the machine's load reaches every library alike); the table gives the median and range
of the per-iteration milliseconds and the ratio of each peer's median to the model's. A peer that is not installed
(`pip install kmeans-transformer[bench]`) is skipped with the reason.

    python benchmarks/batched.py --threads 1                 # B1000_n200_d2_k4 and B256_n1024_d32_k16
    python benchmarks/batched.py --threads 2 --rounds 9 --peers scikit-learn torch-kmeans

Prints a Markdown table (with the machine, date and load average); not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import BATCHED, OURS, RUNNERS, configure_threads, machine_description, make_problem  # noqa: E402

PEERS = ("scikit-learn", "torch-kmeans", "fast-pytorch-kmeans")


def run(case, args) -> dict[str, list[float] | str]:
    """Per-iteration milliseconds of each library on `case`, the libraries taking turns round after round."""
    problem = make_problem(case, args.seed)
    fits, times = {}, {}
    for library in (OURS, *args.peers):
        try:
            fits[library] = RUNNERS[library](problem, "cpu")
            fits[library](1)  # warm-up
            times[library] = []
        except Exception as error:  # a peer that is missing or cannot run the case is reported, not fatal
            times[library] = f"skipped: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(f"{case.name}: {library} {times[library]}", file=sys.stderr)
            fits.pop(library, None)
    for _ in range(args.rounds):
        for library, fit in fits.items():
            start = time.perf_counter()
            ran = fit(args.iterations).iterations
            times[library].append(1000 * (time.perf_counter() - start) / ran)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--cases", nargs="+", default=[case.name for case in BATCHED],
                        choices=[case.name for case in BATCHED])
    args = parser.parse_args(argv)
    limiter = configure_threads(args.threads)
    machine = machine_description("cpu")
    print(f"{machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {machine['load_average']}, "
          f"torch {machine['versions']['torch']}, scikit-learn {machine['versions']['scikit-learn']}, "
          f"torch-kmeans {machine['versions']['torch-kmeans']}, "
          f"fast-pytorch-kmeans {machine['versions']['fast-pytorch-kmeans']}\n")
    print("| case | library | ms / iteration (median, range) | peer / model |\n|---|---|---|---|")
    for case in (case for case in BATCHED if case.name in args.cases):
        times = run(case, args)
        ours = statistics.median(times[OURS])
        for library, values in times.items():
            if isinstance(values, str):
                print(f"| {case.name} | {library} | {values} | |")
                continue
            median = statistics.median(values)
            ratio = "" if library == OURS else f"{median / ours:.1f}x"
            print(f"| {case.name} | {library} | {median:.2f} ({min(values):.2f}-{max(values):.2f}) | {ratio} |",
                  flush=True)
    del limiter


if __name__ == "__main__":
    main()
