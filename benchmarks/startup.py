"""Start-up time of the command and the package, each the median of several runs in fresh subprocesses.

Measured: `kmeans-transformer --help` and an argument error (`kmeans-transformer cluster` without its arguments),
both through the installed console script (the one next to this interpreter),
`import kmeans_transformer`, `import torch, transformers` (what the package is built on) and `from sklearn.cluster
import KMeans` (for comparison). Each run is a new interpreter (`sys.executable`), timed from start to exit with
`time.perf_counter`, after one untimed warm-up run of each (the files then come from the page cache). Prints a
Markdown table with the machine, the date and the load average, and writes it to `--output` if given.

    python benchmarks/startup.py                  # 5 runs each
    python benchmarks/startup.py --runs 9 --output startup.md
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


CASES = {
    "`kmeans-transformer --help`": ["kmeans-transformer", "--help"],
    "argument error (`kmeans-transformer cluster`)": ["kmeans-transformer", "cluster"],
    "`import kmeans_transformer`": ["-c", "import kmeans_transformer"],
    "`import torch, transformers`": ["-c", "import torch, transformers"],
    "`from sklearn.cluster import KMeans`": ["-c", "from sklearn.cluster import KMeans"],
}


def seconds(arguments: list[str]) -> float:
    """Wall time of one run: the console script `kmeans-transformer` or `python ARGUMENTS`."""
    if arguments[0] == "kmeans-transformer":
        command = [str(Path(sys.executable).parent / "kmeans-transformer"), *arguments[1:]]
    else:
        command = [sys.executable, *arguments]
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def table(runs: int) -> str:
    for arguments in CASES.values():  # warm-up: the page cache, compiled bytecode
        seconds(arguments)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for name, arguments in CASES.items():
        times = [seconds(arguments) for _ in range(runs)]
        rows.append(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} |")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"Start-up seconds, median of {runs} fresh processes ({machine()}; {date}; load average {load:.2f} before, "
        f"{load_after:.2f} after):",
        "",
        "| what | median (s) | min-max (s) |",
        "|---|---|---|",
        *rows,
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default: 5)")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    text = table(args.runs)
    print(text, end="")
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
