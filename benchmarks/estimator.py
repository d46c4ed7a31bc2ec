"""The scikit-learn estimator's cost around the model: `kmeans_transformer.KMeans.fit` against the bare model and
against scikit-learn's `KMeans`, side by side in one run.

Data: a seeded float32 Gaussian mixture of `--n` points in `--d` dimensions around `--k` centres (unit noise,
centres spread by 4).

1. Per-iteration overhead. `KMeans(k, init=X0, n_init=1, tol=0).fit(X)` runs until its labels stop changing; its
   time divided by `n_iter_` is set beside the bare model running the same `n_iter_` iterations from the same
   initial centroids in one `forward` call (`KMeansTransformerModel`, `final_assignment=True`, under `no_grad`),
   divided by the same count. The ratio is what the estimator's loop (convergence checks, empty-cluster
   relocation, the final assignment) costs per iteration; the target is at most 1.2. The same pair with
   `max_iter=1` / `num_iterations=1` gives what a fit costs once (input checks, the two models it builds, the final
   assignment), and the ratio of the differences what each further iteration costs.
2. Restarts. `KMeans(k, n_init=10, random_state=s).fit(X)` of this library and of scikit-learn, the same seeds (the
   k-means++ draws differ between libraries, so the iteration counts are reported too); the target is a ratio of
   at most 1.0.

Each measurement is one untimed warm-up, then the median of `--repeats` timed runs, the runs of the two sides of a
ratio taken in turn. Every library uses the same
number of threads (`--threads`: torch's and the OpenMP/BLAS pools through threadpoolctl).

Writes `estimator.md` and `estimator.json` to `--output-dir` (default: a new directory `estimator-<date>-<time>` in
the current one); existing results there are refused unless `--overwrite`.

    python benchmarks/estimator.py --quick          # 20,000 points, a few seconds
    python benchmarks/estimator.py                  # 100,000 x 16, k = 8 (the recorded figures)

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine_description  # noqa: E402  (a sibling script, not a package)

from kmeans_transformer.files import check_new_path, replacing_file  # noqa: E402


def mixture(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def interleaved(functions, repeats: int) -> list[tuple[float, object]]:
    """Per function, the median wall time of `repeats` calls after one untimed warm-up, and its last result; the
    functions are run in turn, one call of each per round, so that a change of the machine's load falls on all alike."""
    results = [function() for function in functions]
    times = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            started = time.perf_counter()
            results[index] = function()
            times[index].append(time.perf_counter() - started)
    return [(statistics.median(spent), result) for spent, result in zip(times, results, strict=True)]


def measure(args) -> dict:
    import torch
    from sklearn.cluster import KMeans as ScikitKMeans

    from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel

    X = mixture(args.n, args.d, args.k, args.seed)
    initial = X[np.random.default_rng(args.seed + 1).permutation(args.n)[: args.k]]

    def estimator_fit():
        return KMeans(args.k, init=initial, n_init=1, tol=0, max_iter=args.max_iter).fit(X)

    fitted = estimator_fit()
    iterations = int(fitted.n_iter_)
    config = KMeansTransformerConfig(point_dim=args.d, num_clusters=args.k, num_iterations=iterations)
    model = KMeansTransformerModel(config).eval()
    points, centroids = torch.from_numpy(X)[None], torch.from_numpy(initial)[None]

    def model_run():
        with torch.no_grad():
            return model(points, centroids=centroids, output_assignments=False)

    (estimator_time, fitted), (model_time, output) = interleaved([estimator_fit, model_run], args.repeats)
    same_labels = float((output.labels[0].numpy() == fitted.labels_).mean())

    # The same with one iteration: what a fit costs once (checks, building the models, the final assignment).
    one_model = KMeansTransformerModel(KMeansTransformerConfig(point_dim=args.d, num_clusters=args.k, num_iterations=1))

    def one_fit():
        return KMeans(args.k, init=initial, n_init=1, tol=0, max_iter=1).fit(X)

    def one_run():
        with torch.no_grad():
            return one_model.eval()(points, centroids=centroids, output_assignments=False)

    (estimator_once, _), (model_once, _) = interleaved([one_fit, one_run], args.repeats)

    names, estimators = ("kmeans-transformer", "scikit-learn"), (KMeans, ScikitKMeans)
    runs = interleaved(
        [lambda estimator=estimator: estimator(args.k, n_init=10, random_state=args.seed).fit(X) for estimator in estimators],
        args.repeats,
    )
    restarts = {
        name: {"seconds": seconds, "n_iter": int(result.n_iter_), "inertia": float(result.inertia_)}
        for name, (seconds, result) in zip(names, runs, strict=True)
    }
    return {
        "iterations": iterations,
        "estimator_ms_per_iteration": estimator_time / iterations * 1e3,
        "model_ms_per_iteration": model_time / iterations * 1e3,
        "overhead_ratio": estimator_time / model_time,
        "fixed_ms": (estimator_once - model_once) * 1e3,
        "marginal_ratio": (estimator_time - estimator_once) / (model_time - model_once),
        "labels_agree": same_labels,
        "restarts": restarts,
        "restarts_ratio": restarts["kmeans-transformer"]["seconds"] / restarts["scikit-learn"]["seconds"],
    }


def write_markdown(path: Path, meta: dict, result: dict) -> None:
    ours, theirs = result["restarts"]["kmeans-transformer"], result["restarts"]["scikit-learn"]
    lines = [
        "# The estimator's cost around the model",
        "",
        f"{meta['date']}, {meta['machine']['cpu']} ({meta['machine']['cores']} cores, load average "
        f"{meta['machine']['load_average']}), {meta['threads']} thread(s), float32, n = {meta['n']}, d = {meta['d']}, "
        f"k = {meta['k']}, median of {meta['repeats']} runs.",
        "",
        "| measurement | value | target |",
        "|---|---|---|",
        f"| `KMeans.fit` per iteration ({result['iterations']} iterations) | "
        f"{result['estimator_ms_per_iteration']:.2f} ms | |",
        f"| bare model per iteration (one call) | {result['model_ms_per_iteration']:.2f} ms | |",
        f"| estimator / model | {result['overhead_ratio']:.2f}x | at most 1.2x |",
        f"| what a fit costs once beyond the model (one iteration each) | {result['fixed_ms']:.1f} ms | |",
        f"| estimator / model, each iteration beyond the first | {result['marginal_ratio']:.2f}x | |",
        f"| `KMeans(n_init=10).fit`: ours | {ours['seconds']:.2f} s ({ours['n_iter']} iterations kept) | |",
        f"| `KMeans(n_init=10).fit`: scikit-learn | {theirs['seconds']:.2f} s ({theirs['n_iter']} iterations kept) | |",
        f"| ours / scikit-learn | {result['restarts_ratio']:.2f}x | at most 1.0x |",
        "",
        f"The estimator's labels equal the bare model's for a fraction {result['labels_agree']:.6f} of the points; "
        f"inertia with 10 restarts: ours {ours['inertia']:.6g}, scikit-learn {theirs['inertia']:.6g}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="number of points (default 100,000)")
    parser.add_argument("--d", type=int, default=16, help="dimension (default 16)")
    parser.add_argument("--k", type=int, default=8, help="number of clusters (default 8)")
    parser.add_argument("--max-iter", type=int, default=300, help="iteration cap of the timed fit (default 300)")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per measurement (default 9)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every library (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the restarts (default 0)")
    parser.add_argument("--quick", action="store_true", help="20,000 points and 3 repeats")
    parser.add_argument("--output-dir", type=Path, help="where to write (default: a new estimator-<date> directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results in --output-dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 20_000, 3
    if args.output_dir is None:
        args.output_dir = Path(f"estimator-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    for name in ("estimator.md", "estimator.json"):
        check_new_path(args.output_dir / name, overwrite=args.overwrite)

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        result = measure(args)
    meta = {
        "date": f"{datetime.date.today():%Y-%m-%d}",
        "machine": machine_description("cpu"),
        **{name: getattr(args, name) for name in ("n", "d", "k", "repeats", "threads")},
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with replacing_file(args.output_dir / "estimator.md", overwrite=args.overwrite) as path:
        write_markdown(path, meta, result)
    with replacing_file(args.output_dir / "estimator.json", overwrite=args.overwrite) as path:
        path.write_text(json.dumps({**meta, **result}, indent=1))
    print((args.output_dir / "estimator.md").read_text())


if __name__ == "__main__":
    main()
