"""Training curves of the learned layer's runs: the loss and the mean log k-means objective against the step.

Usage: python docs/learning/plot_training.py RUN_DIR[=LABEL] ... --output docs/learning/training.png
Each RUN_DIR holds the log.jsonl that `kmeans-transformer train` writes. Also prints, per run, the first logged step
at which the loss (mean of 10 logged values) reaches each of a few levels.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def read_log(directory):
    records = [json.loads(line) for line in (Path(directory) / "log.jsonl").read_text().splitlines() if line.strip()]
    return {key: np.array([r[key] for r in records]) for key in ("step", "loss", "log_objective")}


def smooth(values, window=10):
    return np.array([values[max(0, i - window + 1) : i + 1].mean() for i in range(len(values))])


def first_step_below(steps, values, level):
    below = np.nonzero(smooth(values) <= level)[0]
    return int(steps[below[0]]) if below.size else None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--output", required=True)
    parser.add_argument("--levels", default="20,18,17,16", help="loss levels for the steps-to-reach table")
    parser.add_argument("--lloyd", type=float, nargs=2, metavar=("LOSS", "LOG_J"),
                        help="the loss and mean log J of one Lloyd iteration, drawn as dashed lines")
    args = parser.parse_args()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    levels = [float(level) for level in args.levels.split(",")]
    print("| run | " + " | ".join(f"steps to loss {level:g}" for level in levels) + " | final loss (mean of last 10 logs) |")
    print("|---|" + "---|" * (len(levels) + 1))
    for run in args.runs:
        directory, _, label = run.partition("=")
        log = read_log(directory)
        label = label or Path(directory).name
        left.plot(log["step"], smooth(log["loss"]), label=label)
        right.plot(log["step"], smooth(log["log_objective"]), label=label)
        reached = [first_step_below(log["step"], log["loss"], level) for level in levels]
        cells = [str(step) if step is not None else "not reached" for step in reached]
        print(f"| {label} | " + " | ".join(cells) + f" | {smooth(log['loss'])[-1]:.3f} |")
    if args.lloyd:
        left.axhline(args.lloyd[0], color="gray", ls="--", lw=1, label="one Lloyd iteration")
        right.axhline(args.lloyd[1], color="gray", ls="--", lw=1, label="one Lloyd iteration")
    left.set(xlabel="step", ylabel="loss (soft k-means objective, λ = 10)", title="training loss (running mean of 10 logs)")
    right.set(xlabel="step", ylabel="mean log J after one layer", title="k-means objective of the training batches")
    for axis in (left, right):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
