#!/usr/bin/env python
# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Before/after check that a refactor leaves every variant's outputs bit-identical.

The script runs a fixed set of cases through the public API only (`KMeansTransformerConfig`,
`KMeansTransformerModel`, `KMeans`), so that the same file runs against the code before and after a refactor, and
records every tensor the model returns, the hidden states and the attentions included, as numpy arrays:

- every variant setting: `lloyd`, `soft` (inverse_temperature 1 and 0.1), `spherical`, `trimmed` (trim_quantile=0.9;
  trim_fraction=0.1), `sparse` (inverse_temperature 0.01, the default, and 0.5), `kmedoids` (deterministic; gumbel
  with a seeded `torch.Generator`), `gmm` (reg_covar 0 and 1e-6, with default and with given variances/weights);
- on Gaussian mixtures drawn with fixed numpy seeds at several sizes `(n, d, k, T)`, on integer data with exact
  distance ties, on data where one initial centroid is far from every point (an empty cluster), on a padded batch
  (problems of different sizes, `attention_mask` with zeros, default initial centroids) and, for `lloyd`,
  `spherical`, `trimmed` and `kmedoids`, on scikit-learn's bundled iris (x10) and digits (raw integer pixels);
- in float64 and float32; `lloyd` and `spherical` through both engines: `fast` (under `torch.no_grad()` without
  hidden states or attentions, the compact path), `dense` (`output_hidden_states=True`, `output_attentions=True`,
  the token path) and `grad` (gradients enabled, no extra outputs: the token path without the output capture); the
  other variants run their only (token) engine, `dense`, with both outputs (every case but `grad` runs under
  `torch.no_grad()`);
- in the standard run, and on a few problems also with `num_iterations=0` (`T0`) and `final_assignment=False`
  (`nofinal`);
- plus the scikit-learn-style estimator: `KMeans(n_clusters=3, n_init=3, random_state=0, variant=...)` fitted on
  iris (x10) in float64 and float32 (`cluster_centers_`, `labels_`, `inertia_`, `n_iter_`, `initial_centers_`
  and, for gmm, `variances_`, `weights_`).

Arrays are keyed `<case>/<output>`, e.g. `lloyd.gauss_n300_d2_k16_T30.float64.dense.std/hidden_states/3` or
`.../attentions/<layer>/<block>`. A case that raises records `<case>/error` (the exception's type name), so a
refactor that changes which inputs are accepted shows up too.

Usage:

    python scripts/compare_variant_outputs.py --write before.npz     # run every case, save every output array
    python scripts/compare_variant_outputs.py --compare before.npz   # run again, compare bit for bit, print a table

`--compare` prints one row per array (case, array, `identical` or the max abs difference; `--only-differences`
keeps the rest) and exits 1 if any array differs (dtype, shape or a single bit; NaNs compare by their bits) or is
missing from the new run; arrays new in this run are listed but do not fail. `--cases SUBSTRING` restricts a run
(and the comparison) to the cases whose name contains it. To run the code before a refactor from a checkout of it,
put that checkout first on the path: `PYTHONPATH=/path/to/old/checkout python scripts/compare_variant_outputs.py
...`; the imported package's location is printed, and stored in the file, for checking.

Torch's intra-op thread count is fixed (`--threads`, default 1, stored in the file) so that both runs sum in the
same order (one thread is also much the fastest on a small, busy machine: about a minute for the whole run on two
cores). Run both sides on the same machine, with the same torch build and the same `KMEANS_TRANSFORMER_CPU_KERNELS`
setting (the compiled CPU kernels and their PyTorch fallback round differently); the file's metadata (package
location, versions, threads, that setting) is printed by `--compare`, with this run's value beside any that differs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel


DTYPES = {"float64": torch.float64, "float32": torch.float32}
FAST_VARIANTS = ("lloyd", "spherical")
# (n, d, k, T) of the Gaussian-mixture problems.
GAUSSIAN_SIZES = ((10, 1, 2, 1), (100, 16, 2, 10), (300, 2, 16, 30), (1000, 8, 8, 20), (2000, 32, 64, 5))
# Problems that also run with num_iterations=0 and with final_assignment=False.
MODE_PROBLEMS = ("gauss_n100_d16_k2_T10", "gauss_n300_d2_k16_T30", "ties", "empty", "padded")
REAL_DATA_VARIANTS = ("lloyd", "spherical", "trimmed", "kmedoids")
META_PREFIX = "__meta__/"
GUMBEL_SEED = 1234


@dataclass(frozen=True)
class Setting:
    """A variant, its config parameters, and which forward inputs it is given."""

    variant: str
    params: dict = field(default_factory=dict)
    seeded: bool = False  # gumbel k-medoids: pass a seeded torch.Generator
    given_components: bool = False  # gmm: pass initial variances and weights


SETTINGS = {
    "lloyd": Setting("lloyd"),
    "soft_g1": Setting("soft", {"inverse_temperature": 1.0}),
    "soft_g0p1": Setting("soft", {"inverse_temperature": 0.1}),
    "spherical": Setting("spherical"),
    "trimmed_q0p9": Setting("trimmed", {"trim_quantile": 0.9}),
    "trimmed_f0p1": Setting("trimmed", {"trim_fraction": 0.1}),
    "sparse_g0p01": Setting("sparse"),
    "sparse_g0p5": Setting("sparse", {"inverse_temperature": 0.5}),
    "kmedoids_det": Setting("kmedoids", {"medoid_selection": "deterministic"}),
    "kmedoids_gumbel": Setting("kmedoids", {"medoid_selection": "gumbel"}, seeded=True),
    "gmm_r0": Setting("gmm", {"reg_covar": 0.0}),
    "gmm_r1e-6": Setting("gmm", {"reg_covar": 1e-6}),
    "gmm_r0_given": Setting("gmm", {"reg_covar": 0.0}, given_components=True),
    "gmm_r1e-6_given": Setting("gmm", {"reg_covar": 1e-6}, given_components=True),
}


@dataclass
class Problem:
    """Points `(n, d)` or `(batch, n, d)`, initial centroids (None: the model's default), an optional mask."""

    name: str
    points: np.ndarray
    centroids: np.ndarray | None
    num_clusters: int
    num_iterations: int
    mask: np.ndarray | None = None
    variants: tuple[str, ...] | None = None  # the variants that run on this problem (None: all)
    variances: np.ndarray | None = None  # gmm's given initial variances, (k,)
    weights: np.ndarray | None = None  # gmm's given initial mixing weights, (k,), exact in float32

    @property
    def point_dim(self) -> int:
        return self.points.shape[-1]


def given_components(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial gmm variances in [0.5, 4) and weights `c_j / 1024` (sum exactly 1 in float32 and float64)."""
    variances = rng.uniform(0.5, 4.0, size=k)
    counts = rng.multinomial(1024 - k, np.full(k, 1.0 / k)) + 1
    return variances, counts / 1024.0


def problem_from(name, points, k, T, seed, mask=None, centroids="choose", variants=None) -> Problem:
    """A problem whose initial centroids are `k` distinct points drawn with `seed` (or as given)."""
    rng = np.random.default_rng(seed)
    if isinstance(centroids, str):
        centroids = points[rng.choice(points.shape[0], size=k, replace=False)]
    variances, weights = given_components(rng, k)
    return Problem(name, points, centroids, k, T, mask, variants, variances, weights)


def gaussian_points(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    """`n` points of a `k`-component Gaussian mixture in `d` dimensions (means ~ N(0, 5^2), unit spread)."""
    means = rng.normal(0.0, 5.0, size=(k, d))
    return means[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def gaussian_problems() -> list[Problem]:
    problems = []
    for seed, (n, d, k, T) in enumerate(GAUSSIAN_SIZES):
        points = gaussian_points(np.random.default_rng(100 + seed), n, d, k)
        problems.append(problem_from(f"gauss_n{n}_d{d}_k{k}_T{T}", points, k, T, seed=200 + seed))
    return problems


def sklearn_problems() -> list[Problem]:
    """Iris scaled by 10 (k=3, T=10) and digits as raw integer pixels (k=10, T=10), for the REAL_DATA_VARIANTS."""
    from sklearn.datasets import load_digits, load_iris

    iris = load_iris().data.astype(np.float64) * 10.0
    digits = load_digits().data.astype(np.float64)
    return [
        problem_from("iris", iris, 3, 10, seed=300, variants=REAL_DATA_VARIANTS),
        problem_from("digits", digits, 10, 10, seed=301, variants=REAL_DATA_VARIANTS),
    ]


def ties_problem() -> Problem:
    """Integer grid points (with duplicates) and integer centroids at equal distances from whole rows of points."""
    grid = np.array([[x, y] for x in range(1, 8) for y in range(1, 8)], dtype=np.float64)
    points = np.concatenate([grid, grid[::5]])
    centroids = np.array([[2.0, 2.0], [4.0, 2.0], [2.0, 4.0], [4.0, 4.0], [6.0, 6.0]])
    return problem_from("ties", points, 5, 6, seed=400, centroids=centroids)


def empty_cluster_problem() -> Problem:
    """Points in the positive orthant; the last initial centroid far away in the opposite direction (it empties)."""
    rng = np.random.default_rng(500)
    points = gaussian_points(rng, 120, 3, 3) + 20.0
    centroids = np.concatenate([points[rng.choice(120, size=3, replace=False)], np.full((1, 3), -100.0)])
    return problem_from("empty", points, 4, 6, seed=501, centroids=centroids)


def padded_problem() -> Problem:
    """Three problems of 40, 25 and 60 points in one batch; zeros of the mask at the end and in the middle."""
    rng = np.random.default_rng(600)
    sizes, n, d, k = (40, 25, 60), 60, 3, 4
    points = np.full((len(sizes), n, d), 7.0)  # padding values, which the mask must hide
    mask = np.zeros((len(sizes), n), dtype=np.int64)
    for row, size in enumerate(sizes):
        real = np.sort(rng.choice(n, size=size, replace=False)) if row == 1 else np.arange(size)
        points[row, real] = gaussian_points(rng, size, d, k)
        mask[row, real] = 1
    return problem_from("padded", points, k, 8, seed=601, mask=mask, centroids=None)


def all_problems() -> list[Problem]:
    return [*gaussian_problems(), *sklearn_problems(), ties_problem(), empty_cluster_problem(), padded_problem()]


def flatten(prefix: str, value, arrays: dict[str, np.ndarray]) -> None:
    """Store a tensor (or nested tuples of tensors, indexed `prefix/i/j`) as numpy arrays."""
    if isinstance(value, torch.Tensor):
        arrays[prefix] = value.detach().cpu().numpy().copy()
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            flatten(f"{prefix}/{index}", item, arrays)
    elif value is not None:
        arrays[prefix] = np.asarray(value)


def model_forward(setting: Setting, problem: Problem, dtype: torch.dtype, engine: str, mode: str):
    """One forward call of the model built for `setting` and `problem`, as the case asks."""
    config = KMeansTransformerConfig(
        num_clusters=problem.num_clusters,
        point_dim=problem.point_dim,
        num_iterations=0 if mode == "T0" else problem.num_iterations,
        variant=setting.variant,
        **setting.params,
    )
    model = KMeansTransformerModel(config).to(dtype).eval()

    def tensor(values):
        return None if values is None else torch.as_tensor(values).to(dtype)

    kwargs = {}
    if problem.mask is not None:
        kwargs["attention_mask"] = torch.as_tensor(problem.mask)
    if setting.given_components:
        kwargs.update(variances=tensor(problem.variances), weights=tensor(problem.weights))
    if setting.seeded:
        kwargs["generator"] = torch.Generator().manual_seed(GUMBEL_SEED)
    if mode == "nofinal":
        kwargs["final_assignment"] = False
    dense = engine == "dense"
    with contextlib.nullcontext() if engine == "grad" else torch.no_grad():
        return model(
            tensor(problem.points),
            tensor(problem.centroids),
            output_hidden_states=dense,
            output_attentions=dense,
            **kwargs,
        )


def model_case_arrays(setting: Setting, problem: Problem, dtype: torch.dtype, engine: str, mode: str) -> dict:
    """Every tensor output of one forward call, keyed by output name (tuples flattened to `name/i/j`)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in model_forward(setting, problem, dtype, engine, mode).items():
        flatten(name, value, arrays)
    return arrays


def model_cases() -> Iterator[tuple[str, Callable[[], dict]]]:
    """(case name, thunk) for every model case: `setting.problem.dtype.engine.mode`."""
    for problem in all_problems():
        modes = ("std", "T0", "nofinal") if problem.name in MODE_PROBLEMS else ("std",)
        for setting_name, setting in SETTINGS.items():
            if problem.variants is not None and setting.variant not in problem.variants:
                continue
            engines = ("fast", "dense", "grad") if setting.variant in FAST_VARIANTS else ("dense",)
            for dtype_name, engine, mode in itertools.product(DTYPES, engines, modes):
                name = f"{setting_name}.{problem.name}.{dtype_name}.{engine}.{mode}"
                yield name, functools.partial(model_case_arrays, setting, problem, DTYPES[dtype_name], engine, mode)


def estimator_case_arrays(setting: Setting, X: np.ndarray) -> dict:
    """The fitted attributes of `KMeans(n_clusters=3, n_init=3, random_state=0)` for `setting` on `X`."""
    estimator = KMeans(n_clusters=3, n_init=3, random_state=0, variant=setting.variant, **setting.params).fit(X)
    names = ("cluster_centers_", "labels_", "inertia_", "n_iter_", "initial_centers_", "variances_", "weights_")
    return {name: np.asarray(getattr(estimator, name)) for name in names if hasattr(estimator, name)}


def estimator_cases() -> Iterator[tuple[str, Callable[[], dict]]]:
    """(case name, thunk) for every estimator case: each setting without forward inputs, on iris x10, both dtypes."""
    from sklearn.datasets import load_iris

    iris = load_iris().data.astype(np.float64) * 10.0
    for setting_name, setting in SETTINGS.items():
        if setting.given_components:  # the estimator takes no initial variances or weights
            continue
        for dtype_name in DTYPES:
            run = functools.partial(estimator_case_arrays, setting, iris.astype(dtype_name))
            yield f"estimator.{setting_name}.iris.{dtype_name}", run


def run_cases(case_filter: str | None) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """
    Run every case whose name contains `case_filter`, one at a time; yield its name and its arrays. A case that
    raises yields `{"error": <exception type name>}` instead (so that a refactor that starts or stops raising shows).
    """
    count, start = 0, time.perf_counter()
    for name, run in (*model_cases(), *estimator_cases()):
        if case_filter and case_filter not in name:
            continue
        case_start = time.perf_counter()
        try:
            arrays = run()
        except Exception as error:
            print(f"  {name} raised {type(error).__name__}: {error}", file=sys.stderr)
            arrays = {"error": np.array(type(error).__name__)}
        count += 1
        elapsed = time.perf_counter() - case_start
        if elapsed > 5.0:
            print(f"  slow case: {name} ({elapsed:.1f} s)", file=sys.stderr)
        yield name, arrays
    print(f"ran {count} cases in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def metadata(threads: int) -> dict[str, np.ndarray]:
    """Where the package was imported from and what the arithmetic depends on (reported, never compared)."""
    import kmeans_transformer

    values = {
        "package_file": kmeans_transformer.__file__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": str(threads),
        "cpu_kernels_env": os.environ.get("KMEANS_TRANSFORMER_CPU_KERNELS", "<unset>"),
    }
    return {META_PREFIX + key: np.array(value) for key, value in values.items()}


def difference(expected: np.ndarray, actual: np.ndarray) -> tuple[bool, str]:
    """Whether two arrays are bit-identical (dtype, shape and bytes), and a description of the difference."""
    if expected.dtype.kind == "U" and actual.dtype.kind == "U":  # error names
        same = expected.tolist() == actual.tolist()
        return same, "identical" if same else f"{expected} -> {actual}"
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        return False, f"dtype/shape {expected.dtype}{expected.shape} -> {actual.dtype}{actual.shape}"
    if expected.tobytes() == actual.tobytes():
        return True, "identical"
    if expected.dtype.kind == "b":
        return False, f"{int(np.count_nonzero(expected != actual))} elements differ"
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False, f"NaN at different places ({int(np.count_nonzero(nan_a != nan_b))} elements)"
    with np.errstate(invalid="ignore"):  # equal infinities give NaN in a - b; they count as equal
        gap = np.where((a == b) | nan_a, 0.0, np.abs(a - b))
    largest = float(gap.max())
    if largest == 0.0:
        return False, "equal values, different bits (signed zero or NaN payload)"
    return False, f"max abs diff {largest:.3e} ({int(np.count_nonzero(gap))} elements)"


def write_archive(path: str, meta: dict[str, np.ndarray], cases) -> int:
    """Write the metadata and every case's arrays to an `.npz` archive (deflated, level 1), case by case."""
    count = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        case_items = ((f"{name}/{key}", value) for name, arrays in cases for key, value in arrays.items())
        for key, value in itertools.chain(meta.items(), case_items):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)
            count += not key.startswith(META_PREFIX)
    print(f"wrote {count} arrays to {path}", file=sys.stderr)
    return 0


def compare_rows(stored, meta: dict, cases, case_filter: str | None) -> Iterator[tuple[str, str, str]]:
    """
    (key, status, text) for the metadata (status "meta"), every array of this run ("identical", "different" or
    "new") and every stored array that this run lacks ("missing").
    """
    stored_keys = set(stored.files)
    for key in sorted(k for k in stored_keys if k.startswith(META_PREFIX)):
        before, now = str(stored[key]), str(meta.get(key, "<none>"))
        yield key, "meta", before if before == now else f"{before}  (this run: {now})"
    seen = set()
    for name, arrays in cases:
        for key, value in arrays.items():
            full_key = f"{name}/{key}"
            seen.add(full_key)
            if full_key not in stored_keys:
                yield full_key, "new", "new in this run (not in the file)"
                continue
            identical, text = difference(stored[full_key], value)
            yield full_key, "identical" if identical else "different", text
    for key in stored.files:
        case = key.partition("/")[0]
        if key not in seen and not key.startswith(META_PREFIX) and (not case_filter or case_filter in case):
            yield key, "missing", "MISSING in this run"


def compare_archive(path: str, meta, cases, case_filter: str | None, only_differences: bool) -> int:
    """Print the comparison table of this run against the archive; return the exit status (1 on any difference)."""
    counts = dict.fromkeys(("identical", "different", "missing", "new"), 0)
    with np.load(path, allow_pickle=False) as stored:
        print(f"{'case':<60}  {'array':<24}  result")
        for key, status, text in compare_rows(stored, meta, cases, case_filter):
            if status != "meta":
                counts[status] += 1
            if only_differences and status == "identical":
                continue
            case, _, array = key.rpartition("/") if status == "meta" else key.partition("/")
            print(f"{case:<60}  {array:<24}  {text}", flush=True)
    print("\n" + ", ".join(f"{count} {status}" for status, count in counts.items()) + " arrays")
    failed = counts["different"] + counts["missing"]
    print("FAILED: outputs changed" if failed else "PASSED: every array bit-identical")
    return 1 if failed else 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="FILE.npz", help="run every case and save every output array")
    action.add_argument("--compare", metavar="FILE.npz", help="run every case and compare with FILE bit for bit")
    parser.add_argument("--cases", metavar="SUBSTRING", help="only the cases whose name contains SUBSTRING")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; keep it fixed)")
    parser.add_argument("--only-differences", action="store_true", help="--compare: print only the failing rows")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = metadata(args.threads)
    print(f"kmeans_transformer imported from {meta[META_PREFIX + 'package_file']}", file=sys.stderr)
    start, cases = time.perf_counter(), run_cases(args.cases)
    if args.write:
        status = write_archive(args.write, meta, cases)
    else:
        status = compare_archive(args.compare, meta, cases, args.cases, args.only_differences)
    print(f"total {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
