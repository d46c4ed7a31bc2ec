"""The `kmeans-transformer` command: `demo`, `convert`, `cluster`, `infer`, `push` and `zoo`."""

import argparse
import os
import queue
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

DEFAULT_TIMEOUT = 300.0  # seconds a process waits for the others in a collective (infer --timeout)
# The arithmetic of every command that builds or fits a model: float64 by default, where the algorithm is exact (the
# reference loops run in float64); `train` alone defaults to float32 (learned weights, trained by gradient steps).
DTYPE_NAMES = ("float32", "float64")
DEFAULT_DTYPE = "float64"
DTYPE_HELP = "arithmetic and weight dtype (default: float64, exact as the reference loops; float32: half the memory)"


# One spelling per concept in every command; the second spelling of each is accepted as an alias. The number of
# clusters is --n-clusters as in scikit-learn (a model's config calls it num_clusters), the seed --seed (cluster's
# `random_state`). An exact iteration count T (the layers of a model) is --num-iterations; --max-iter (cluster) is a
# different thing, an upper bound on iterations until convergence, as in scikit-learn.
N_CLUSTERS = ("--n-clusters", "--num-clusters")
SEED = ("--seed", "--random-state")


def add_progress_arguments(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--verbose", action="store_true", help="let the libraries (transformers, datasets, Hub) "
                        "show their own progress bars and messages too")


def _quiet_libraries() -> None:
    """
    The libraries' own progress bars (transformers' "Loading weights", datasets' and the Hub's) off: the environment
    variables for those not imported yet, the switches of those that are.
    """
    import os

    for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def command_line_options() -> dict:
    """
    What the parser reads from the package's registries, as plain data: the variants (`algorithms`: those built as
    algorithms, not `VariantSpec.trainable`), one option per variant parameter with its help from the specs, the zoo's
    sizes, the task families, the learned layer's starts and evaluation settings. The console command parses with a
    snapshot of it (`command_options.OPTIONS`), so that `--help` and argument errors import neither torch nor
    transformers; a test checks the snapshot against this function, and `python scripts/write_command_options.py`
    rewrites it.
    """
    from .learned import EVALUATION_NUM_POINTS, EVALUATION_SEED, STARTS
    from .tasks import FAMILIES
    from .variants import ALGORITHM_PARAMETER_NAMES, INITIALIZATIONS, PARAMETER_NAMES, PARAMETERS, VARIANT_NAMES, VARIANTS
    from .zoo import STANDARD_SIZES

    parameters = {}
    for name in PARAMETER_NAMES:
        parameter = PARAMETERS[name]
        forms = [value for spec in VARIANTS.values() if spec.form_parameter == name for value in spec.forms]
        parameters[name] = {
            "choices": forms or list(parameter.choices or ()),
            "help": f"{parameter.description}; " + _parameter_help(name, parameter.requirement),
        }
    return {
        "variants": list(VARIANT_NAMES),
        "algorithms": [name for name in VARIANT_NAMES if not VARIANTS[name].trainable],
        "parameters": parameters,
        "algorithm_parameters": list(ALGORITHM_PARAMETER_NAMES),
        "standard_sizes": [list(size) for size in STANDARD_SIZES],
        "families": list(FAMILIES),
        "initializations": list(INITIALIZATIONS),
        "starts": list(STARTS),
        "evaluation_num_points": list(EVALUATION_NUM_POINTS),
        "evaluation_seed": EVALUATION_SEED,
    }


def _options() -> dict:
    """The parser's registry data: the snapshot the console command ships (see `command_line_options`)."""
    from .command_options import OPTIONS

    return OPTIONS


def _algorithm_parameters(args: argparse.Namespace) -> dict:
    from .variants import ALGORITHM_PARAMETER_NAMES

    return {name: getattr(args, name) for name in ALGORITHM_PARAMETER_NAMES}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", default="lloyd", choices=_options()["algorithms"],
        help="clustering algorithm (default: lloyd; a learned layer is written by the train command)",
    )
    parser.add_argument(*N_CLUSTERS, dest="n_clusters", type=int, required=True, metavar="K",
                        help="number of clusters k (the config's num_clusters)")
    parser.add_argument("--point-dim", type=int, required=True, metavar="D", help="dimension d of the points")
    parser.add_argument("--num-iterations", type=int, required=True, metavar="T",
                        help="number of iterations T (layers)")
    parser.add_argument("--separate-layers", action="store_true", help="T separate layers instead of one looped layer")
    add_variant_arguments(parser, algorithms_only=True)
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help=DTYPE_HELP)
    parser.add_argument("--output", required=True, metavar="DIR", help="checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")


def add_variant_arguments(parser: argparse.ArgumentParser, algorithms_only: bool = False) -> None:
    """
    One option per variant parameter (`variants.PARAMETERS`; those the algorithms read if `algorithms_only`), its
    values, readers and defaults from the specs.
    """
    options = _options()
    group = parser.add_argument_group("variant parameters (each only for the variants that read it)")
    for name in options["algorithm_parameters"] if algorithms_only else options["parameters"]:
        parameter = options["parameters"][name]
        kind = {"choices": parameter["choices"]} if parameter["choices"] else {"type": float, "metavar": "X"}
        group.add_argument(f"--{name.replace('_', '-')}", **kind, help=parameter["help"])


def _parameter_help(name: str, requirement: str) -> str:
    """`readers: requirement (default: the most common one; a variant: its own)`, and the exclusive parameters."""
    from .variants import VARIANTS

    defaults = {spec.name: spec.parameters[name] for spec in VARIANTS.values() if name in spec.parameters}
    shown = {variant: "unset" if value is None else str(value) for variant, value in defaults.items()}
    common = max(shown.values(), key=list(shown.values()).count)
    others = "".join(f"; {variant}: {value}" for variant, value in shown.items() if value != common)
    pairs = [pair for spec in VARIANTS.values() for pair in spec.exclusive if name in pair]
    exclusive = [other for pair in pairs for other in pair if other != name]
    text = f"{', '.join(defaults)}: {requirement} (default: {common}{others})"
    text += "".join(f"; exclusive with --{other.replace('_', '-')}" for other in dict.fromkeys(exclusive))
    return text.replace("%", "%%")


def run_convert(args: argparse.Namespace) -> None:
    from .convert import build_model, convert_checkpoint

    model = build_model(
        num_clusters=args.n_clusters,
        point_dim=args.point_dim,
        num_iterations=args.num_iterations,
        variant=args.variant,
        dtype=args.dtype,
        share_layers=not args.separate_layers,
        **_algorithm_parameters(args),
    )
    report = convert_checkpoint(model, args.output, overwrite=args.overwrite)
    print(
        f"wrote {args.output}: {args.variant}, k={args.n_clusters}, d={args.point_dim}, T={args.num_iterations}, "
        f"{args.dtype}; validated against {report.reference} on {report.num_problems} mixtures: labels identical "
        f"{report.label_agreement:.4%}, max relative centroid error {report.max_relative_centroid_error:.2e}"
        + (f", outlier flags identical {report.outlier_agreement:.4%}" if report.outlier_agreement is not None else "")
        + (
            f", max relative variance/weight error {report.max_relative_parameter_error:.2e}"
            if report.max_relative_parameter_error is not None
            else ""
        )
    )


def run_demo(args: argparse.Namespace) -> None:
    """Cluster a built-in Gaussian mixture with the transformer and with the reference loop, and compare."""
    import numpy as np
    import torch

    with torch.no_grad():
        _demo(args, np, torch)


def _demo(args: argparse.Namespace, np, torch) -> None:
    generator = np.random.default_rng(args.seed)
    k, d, iterations = 5, 2, 10
    from .convert import build_model
    from .reference import lloyd
    from .validation import gaussian_mixture

    points = gaussian_mixture(generator, 2000, d, k)
    initial = points[generator.choice(len(points), size=k, replace=False)]
    model = build_model(num_clusters=k, point_dim=d, num_iterations=iterations, dtype="float64")
    output = model(torch.tensor(points), torch.tensor(initial))
    expected = lloyd(points, initial, iterations)
    sizes = np.bincount(output.labels[0].numpy(), minlength=k)
    print(f"Lloyd's k-means as a transformer: {len(points)} points, d={d}, k={k}, {iterations} layers (float64)")
    print(f"  parameters: {sum(p.numel() for p in model.parameters())}, attention kernel: {model.config._attn_implementation}")
    print(f"  inertia: {output.inertia.item():.6f} (reference loop: {expected.inertia:.6f})")
    print(f"  cluster sizes: {sizes.tolist()}")
    print(f"  labels identical to the reference: {bool((output.labels[0].numpy() == expected.labels).all())}")
    error = np.abs(output.centroids[0].numpy() - expected.centroids).max()
    print(f"  max centroid difference from the reference: {error:.2e}")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="points: .csv, .parquet, .npy or a datasets save_to_disk directory")
    parser.add_argument(*N_CLUSTERS, dest="n_clusters", type=int, required=True, metavar="K",
                        help="number of clusters k")
    parser.add_argument("--output", required=True, metavar="OUT", help="the rows with their labels: .csv or .parquet")
    parser.add_argument(
        "--variant", default="lloyd", choices=_options()["algorithms"], help="clustering algorithm (default: lloyd)"
    )
    add_variant_arguments(parser, algorithms_only=True)
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--init", default="k-means++", choices=("k-means++", "random"), help="initial centroids (default: k-means++)")
    fit.add_argument("--n-init", default="auto", metavar="N|auto", help="restarts, run as one batch (default: auto: 1, "
                     "or 10 for random)")
    fit.add_argument("--max-iter", type=int, default=300, metavar="N", help="iterations per restart at most (default: 300)")
    fit.add_argument("--tol", type=float, default=1e-4, metavar="X", help="relative tolerance on the centroid shift "
                     "(default: 1e-4); 0: exact convergence only")
    fit.add_argument(*SEED, dest="seed", type=int, metavar="SEED", help="seed of the initialisation, the estimator's "
                     "random_state (default: a new draw)")
    fit.add_argument("--standardize", action="store_true", help="z-score every feature before clustering (as "
                     "scikit-learn's StandardScaler: mean 0, population standard deviation 1; a constant feature "
                     "becomes 0); the centroids table is written in the input's units, the inertia and the plot are in "
                     "standardised units")
    fit.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help=DTYPE_HELP)
    fit.add_argument("--device", metavar="DEV", help="torch device such as cpu or cuda (default: cpu); it must hold "
                     "data (not meta)")
    add_progress_arguments(fit)
    io = parser.add_argument_group("columns and outputs")
    io.add_argument("--columns", metavar="A,B,...", help="feature columns (default: every numeric column); a column "
                    "of equally long lists of numbers gives one feature per entry")
    io.add_argument("--weight-column", metavar="NAME", help="column of non-negative sample weights (not a feature): "
                    "each row counts as its weight (default: every row weighs 1)")
    io.add_argument("--label-column", default="label", metavar="NAME", help="label column to add (default: label)")
    io.add_argument("--centroids", metavar="PATH", help="centroids table, .csv or .parquet (default: OUT's stem + "
                    "_centroids + OUT's suffix)")
    io.add_argument("--plot", metavar="FIG.png", help="draw the clusters and the centroids' paths (needs matplotlib)")
    io.add_argument("--save-model", metavar="DIR", help="save the fitted estimator as a Hugging Face checkpoint")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs, each whole, once every new one "
                    "is complete (a directory given to --save-model only if it holds a checkpoint)")


def _n_init(value: str):
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"--n-init must be 'auto' or an integer >= 1, not {value!r}.")
    return number


def _columns(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError(f"--columns has an empty name: {value!r}.")
    return names


_FLAGS = {"output": "--output", "centroids": "--centroids", "plot": "--plot", "model": "--save-model"}
_DIRECTORY_OUTPUTS = ("model",)


def _check_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """
    Every output path, checked before any work: suffixes, nothing to overwrite without --overwrite (a symbolic link
    counts as existing), a writable place, no two alike or one inside another, none that is, holds or lies inside
    the input.
    """
    from .convert import check_checkpoint_output
    from .plotting import check_plot_path
    from .tabular import OUTPUT_SUFFIXES, check_output_path, check_writable_parent

    output = Path(args.output)
    centroids = args.centroids or output.with_name(f"{output.stem}_centroids{output.suffix}")
    paths = {"output": output, "centroids": centroids, "plot": args.plot, "model": args.save_model}
    paths = {name: Path(path) for name, path in paths.items() if path is not None}
    _refuse_overlaps({_FLAGS[name]: path for name, path in paths.items()}, [args.input])
    outputs = {name: check_output_path(paths[name], OUTPUT_SUFFIXES, args.overwrite, what=_FLAGS[name])
               for name in ("output", "centroids")}
    if "plot" in paths:
        outputs["plot"] = check_plot_path(paths["plot"], args.overwrite)
    if "model" in paths:  # replaced whole with --overwrite: only a directory of a checkpoint's files
        outputs["model"] = check_checkpoint_output(paths["model"], args.overwrite)
        check_writable_parent(paths["model"])
    return outputs


def _refuse_overlaps(outputs: dict[str, Path], inputs: list) -> None:
    """
    A `ValueError` if an output (by its flag) resolves to, holds or lies inside an input (`files.refuse_overlap`), or
    another output: writing one would destroy the other.
    """
    from .files import refuse_overlap

    for flag, path in outputs.items():
        refuse_overlap(path, inputs, what=flag)
    resolved = {flag: Path(path).resolve() for flag, path in outputs.items()}
    for position, (flag, path) in enumerate(resolved.items()):
        for other, other_path in list(resolved.items())[:position]:
            if path == other_path:
                raise ValueError(f"{other} and {flag} name the same path: {outputs[flag]}.")
            if other_path in path.parents or path in other_path.parents:
                raise ValueError(
                    f"{other} and {flag} overlap: {outputs[other]} and {outputs[flag]}, one inside the other."
                )


def _check_device(name: str | None) -> None:
    """`--device`: a torch device that is available and holds data (the meta device holds none)."""
    import torch

    from .estimator import check_device

    device = check_device(name)
    try:
        torch.zeros(1, device=device).cpu()
    except (RuntimeError, NotImplementedError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"device {str(device)!r} cannot hold the data ({reason}); use cpu or an accelerator such as "
                         "cuda.") from error


def run_cluster(args: argparse.Namespace) -> None:
    """Cluster the rows of a table; write them with their labels, the centroids and, if asked, a plot and the model."""
    import numpy as np

    from .estimator import KMeans
    from .plotting import plot_estimator
    from .tabular import read_points, sample_weights

    start = time.perf_counter()
    if args.n_clusters < 1:
        raise ValueError(f"--n-clusters must be >= 1, not {args.n_clusters}.")
    n_init, columns = _n_init(args.n_init), _columns(args.columns)
    if not args.label_column:
        raise ValueError("--label-column must not be empty.")
    _check_device(args.device)
    outputs = _check_outputs(args)

    exclude = () if args.weight_column is None else (args.weight_column,)
    table, X, feature_names = read_points(args.input, columns, exclude=exclude)
    weights = None if args.weight_column is None else sample_weights(table, args.weight_column, args.input)
    if args.label_column in {str(name) for name in table.columns}:
        raise ValueError(
            f"{args.input} already has a column {args.label_column!r}; choose another name with --label-column."
        )
    if "cluster" in feature_names:
        raise ValueError("A feature is named 'cluster', the name of the centroids table's index column; rename it.")
    if args.n_clusters > len(X):
        raise ValueError(f"--n-clusters {args.n_clusters} is larger than the number of rows ({len(X)}).")

    estimator = KMeans(
        args.n_clusters,
        init=args.init,
        n_init=n_init,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=args.seed,
        variant=args.variant,
        **_algorithm_parameters(args),
        device=args.device,
        dtype=args.dtype,
        progress_bar=not args.no_progress,
    )
    import pandas as pd

    mean, scale = standardization(X, weights) if args.standardize else (0.0, 1.0)
    points = pd.DataFrame((X - mean) / scale, columns=feature_names)
    fit_start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(points, sample_weight=weights)
    fit_seconds = time.perf_counter() - fit_start
    for warning in caught:
        print(f"kmeans-transformer cluster: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)

    labelled = table.copy()
    labelled[args.label_column] = np.asarray(estimator.labels_, dtype=np.int64)
    centroids = pd.DataFrame(estimator.cluster_centers_ * scale + mean, columns=feature_names)
    centroids.insert(0, "cluster", np.arange(args.n_clusters))
    figure = plot_estimator(estimator, points, sample_weight=weights) if "plot" in outputs else None
    _write_cluster_outputs(outputs, args.overwrite, labelled, centroids, figure, estimator)

    _print_cluster_summary(args, estimator, feature_names, outputs, fit_seconds, time.perf_counter() - start)


def standardization(X, sample_weight=None):
    """
    `(mean, scale)` of `cluster --standardize`, as scikit-learn's `StandardScaler`: the (weighted) mean and population
    standard deviation σ = sqrt(mean((x - mean)²)) of each column, σ = 1 where a column is constant (it becomes 0).
    """
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    weights = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = np.average(X, axis=0, weights=weights)
    std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=weights))
    # StandardScaler's test for a constant column: a deviation at rounding level of the column's magnitude
    constant = std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(constant, 1.0, std)


def _write_cluster_outputs(outputs: dict[str, Path], overwrite: bool, labelled, centroids, figure, estimator) -> None:
    """
    Every output is written under its temporary name first (`files.replacing_file`, `replacing_directory`); they are
    renamed into place together, once every one is complete: a late failure (the model, the plot, a full disk) or an
    interrupt leaves the previous outputs, or none.
    """
    from .files import replacing_directory, replacing_file
    from .plotting import write_png
    from .tabular import write_table_file

    writers = {
        "output": lambda file: write_table_file(labelled, file, outputs["output"].suffix),
        "centroids": lambda file: write_table_file(centroids, file, outputs["centroids"].suffix),
        "plot": lambda file: write_png(figure, file),
        "model": lambda directory: estimator.save_pretrained(directory),
    }
    with ExitStack() as stack:
        for name, path in outputs.items():
            replacing = replacing_directory if name in _DIRECTORY_OUTPUTS else replacing_file
            writers[name](stack.enter_context(replacing(path, overwrite)))


def _print_cluster_summary(args, estimator, feature_names, outputs, fit_seconds: float, seconds: float) -> None:
    """What `cluster` did: the data, the fit, the cluster sizes (and outliers, for a variant that reports them)."""
    import numpy as np

    labels = np.asarray(estimator.labels_, dtype=np.int64)
    restarts = estimator.n_restarts_
    sizes = np.bincount(labels[labels >= 0], minlength=args.n_clusters)
    d = len(feature_names)
    features = f"{d} features: {', '.join(feature_names)}" if d <= 8 else f"{d} features"
    stopped = " (the --max-iter limit)" if estimator.n_iter_ >= args.max_iter else ""
    print(f"clustered {len(labels)} rows of {args.input}, {features}")
    print(
        f"  {args.variant}, k={args.n_clusters}, {restarts} restart{'s' if restarts != 1 else ''} ({args.init}, "
        f"seed {args.seed}{', standardised' if args.standardize else ''})"
    )
    print(f"  inertia: {estimator.inertia_:.10g}")
    print(f"  iterations: {estimator.n_iter_}{stopped}")
    if args.n_clusters <= 20:
        print(f"  cluster sizes: {', '.join(f'{j}: {size}' for j, size in enumerate(sizes))}")
    else:
        print(f"  cluster sizes: smallest {sizes.min()}, median {int(np.median(sizes))}, largest {sizes.max()}")
    if estimator.model_.config.variant_spec.reports_outliers:
        print(f"  outliers (label -1): {int((labels < 0).sum())}")
    print(f"  time: {fit_seconds:.2f} s fitting, {seconds:.2f} s in all")
    what = {
        "output": f"the rows with column {args.label_column!r}",
        "centroids": "the centroids",
        "plot": "the plot",
        "model": "the fitted model",
    }
    for name, path in outputs.items():
        print(f"  wrote {path}: {what[name]}")


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR_OR_REPO", help="a checkpoint directory or Hub repository id")
    parser.add_argument("--dataset", required=True, metavar="PATH", help="a datasets save_to_disk directory or a .parquet "
                        "file (problems mode also reads .json/.jsonl)")
    parser.add_argument("--output", required=True, metavar="OUT", help="problems: a .parquet file or a datasets "
                        "directory; points: a directory (centroids.parquet, summary.json, labels/)")
    parser.add_argument("--mode", choices=("problems", "points"), default="problems",
                        help="problems: each row is a problem (default); points: the rows are the points of one problem")
    parser.add_argument("--num-iterations", type=int, metavar="T", help="iterations (shared-layer models only; "
                        "default: the model's num_iterations)")
    parser.add_argument("--weight-column", "--weights-column", dest="weight_column", metavar="NAME", help="column of "
                        "sample weights, numbers >= 0 (default: every point weighs 1); problems mode: a list per row, "
                        "one weight per point of the problem; points mode: one number per row (not a feature)")
    problems = parser.add_argument_group("problems mode")
    problems.add_argument("--points-column", default="points", metavar="NAME",
                          help="column of each problem's points (default: points)")
    problems.add_argument("--centroids-column", metavar="NAME",
                          help="column of each problem's initial centroids (default: the model's)")
    problems.add_argument("--batch-size", type=int, default=64, metavar="N",
                          help="problems per batch and process (default: 64)")
    points = parser.add_argument_group("points mode")
    points.add_argument("--columns", metavar="A,B,...", help="feature columns (default: every numeric column; a "
                        "list-valued column such as an embedding counts as its coordinates)")
    points.add_argument("--chunk-size", type=int, default=65536, metavar="N",
                        help="points read and assigned at a time (default: 65536)")
    points.add_argument("--cache", choices=("disk", "none"), default="disk",
                        help="disk: the first pass writes the decoded points to a private scratch file that later "
                        "passes read back (removed at the end); none: decode the dataset on every pass (default: disk)")
    points.add_argument("--cache-directory", metavar="DIR", help="where the scratch file is made (default: the "
                        "system's temporary directory); it needs room for each process's rows as decoded")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if an accelerator is available "
                        "(the device is otherwise Accelerate's choice, one per process)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="several processes: "
                        "how long a process waits for the others in a collective operation; a process that failed, "
                        "was stopped or lost ends the run with an error after this time "
                        f"(default: {DEFAULT_TIMEOUT:g})")
    add_progress_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output, whole, once the new one "
                        "is complete")


def _load_model(name: str):
    """The checkpoint `name` (directory or Hub id) as a `KMeansTransformerModel`, with a one-line error."""
    from .modeling_kmeans_transformer import KMeansTransformerModel

    try:
        return KMeansTransformerModel.from_pretrained(name)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load the model {name!r}: {reason}") from error


def _check_infer_output(args: argparse.Namespace) -> Path:
    """--output, checked before any work (as `_check_outputs` for cluster), against the dataset and the model."""
    from .points import is_points_output
    from .problems import check_problem_results_path
    from .tabular import check_output_directory

    inputs = [args.dataset] + ([args.model] if Path(args.model).exists() else [])
    _refuse_overlaps({"--output": Path(args.output)}, inputs)
    if args.mode == "points":
        kind = "a points-mode output (centroids.parquet, summary.json, labels/)"
        return check_output_directory(args.output, args.overwrite, is_points_output, kind)
    return check_problem_results_path(args.output, args.overwrite)


def run_infer(args: argparse.Namespace) -> None:
    """Run a checkpoint on a dataset under Accelerate: many problems (one per row), or one problem of many rows."""
    if args.batch_size < 1 or args.chunk_size < 1:
        raise ValueError("--batch-size and --chunk-size must be >= 1.")
    if not 0 < args.timeout < float("inf"):
        raise ValueError(f"--timeout must be > 0 seconds, not {args.timeout:g}.")
    output = _check_infer_output(args)
    model = _load_model(args.model)
    accelerator = _accelerator(args)
    try:
        run = _infer_points if args.mode == "points" else _infer_problems
        run(args, model, accelerator, output)
    finally:
        # without this, a process whose peer stopped answering aborts at exit ("terminate called ...")
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _accelerator(args: argparse.Namespace):
    """The `Accelerator`, its process group (gloo or NCCL, when launched on several processes) with `--timeout`."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=args.timeout))
    return Accelerator(cpu=args.cpu, kwargs_handlers=[timeout])


def _infer_problems(args: argparse.Namespace, model, accelerator, output: Path) -> None:
    from .problems import infer_problems, load_problems, write_problem_results

    start = time.perf_counter()
    results = infer_problems(
        model,
        load_problems(args.dataset),
        points_column=args.points_column,
        centroids_column=args.centroids_column,
        batch_size=args.batch_size,
        num_iterations=args.num_iterations,
        accelerator=accelerator,
        progress=not args.no_progress,
        weights_column=args.weight_column,
    )
    if accelerator.is_main_process:
        write_problem_results(results, output, overwrite=args.overwrite)
        print(
            f"clustered {len(results)} problems of {args.dataset} on {accelerator.num_processes} process(es) "
            f"({accelerator.device}) in {time.perf_counter() - start:.2f} s; wrote {output}"
        )


def _infer_points(args: argparse.Namespace, model, accelerator, output: Path) -> None:
    """
    Points mode: the output directory is built whole under a temporary name (`points.shared_output_directory`: process
    0 creates it, every process writes its labels into it, process 0 writes the centroids and `summary.json` last),
    and takes `output`'s place only when complete.
    """
    from .points import cluster_points, shared_output_directory, write_points_output

    start = time.perf_counter()
    model = model.to(accelerator.device)
    with shared_output_directory(output, args.overwrite, accelerator) as directory:
        result = cluster_points(
            model,
            args.dataset,
            columns=_columns(args.columns),
            chunk_size=args.chunk_size,
            num_iterations=args.num_iterations,
            accelerator=accelerator,
            progress=not args.no_progress,
            labels_output=directory / "labels",
            weight_column=args.weight_column,
            cache=args.cache,
            cache_directory=args.cache_directory,
        )
        if accelerator.is_main_process:
            write_points_output(result, directory, accelerator.num_processes, model=args.model, dataset=args.dataset)
    if accelerator.is_main_process:
        print(
            f"clustered {result.num_points} points of {args.dataset} into {len(result.centroids)} clusters on "
            f"{accelerator.num_processes} process(es) ({accelerator.device}): {result.num_iterations} iterations, "
            f"inertia {result.inertia:.10g}, {time.perf_counter() - start:.2f} s; wrote {output}"
        )


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory (from convert, cluster --save-model, zoo)")
    parser.add_argument("--repo-id", required=True, metavar="OWNER/NAME",
                        help="Hub model repository OWNER/NAME (or NAME in your namespace)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created from main if new)")
    parser.add_argument("--commit-message", metavar="TEXT", help="commit message (default: names the variant and size)")
    parser.add_argument("--exist-ok", action="store_true", help="commit to the repository even if it already exists")


def run_push(args: argparse.Namespace) -> None:
    from .hub import push_checkpoint

    commit = push_checkpoint(
        args.directory,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
        exist_ok=args.exist_ok,
        exists_hint="pass --exist-ok",
    )
    print(f"pushed {args.directory} to {commit.repo_url.repo_id}: {commit.commit_url}")


def _sizes(value: str) -> list[tuple[int, int, int]]:
    try:
        sizes = [tuple(int(part) for part in size.split("x")) for size in value.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 3 or min(size) < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected sizes KxDxT[,KxDxT...] of positive integers, got {value!r}")
    return sizes


def _variants(value: str) -> list[str]:
    known = _options()["variants"]
    variants = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in variants if name not in known]
    if not variants or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {unknown or value!r}; expected some of {', '.join(known)}"
        )
    return variants


def add_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    options = _options()
    variant_names, standard_sizes = options["variants"], [tuple(size) for size in options["standard_sizes"]]
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder to write the checkpoints and the README table into")
    parser.add_argument("--owner", metavar="NAMESPACE",
                        help="Hub namespace the checkpoints will be pushed to (named in cards and table)")
    parser.add_argument(
        "--variants",
        type=_variants,
        default=list(variant_names),
        help=f"comma-separated variants (default: all: {','.join(variant_names)})",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=standard_sizes,
        help="comma-separated KxDxT sizes (default: " + ",".join("x".join(map(str, size)) for size in standard_sizes) + ")",
    )
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help=DTYPE_HELP)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    add_progress_arguments(parser)


def run_zoo(args: argparse.Namespace) -> None:
    from .zoo import build_zoo, standard_zoo

    results = build_zoo(
        args.output,
        standard_zoo(args.variants, args.sizes),
        owner=args.owner,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {len(results)} validated checkpoints and their table to {args.output}/README.md")


def run_build_kernels(args) -> None:
    from .cpu_kernels import build_kernels

    started = time.monotonic()
    path = build_kernels()
    if path is None:
        raise OSError("the compiled CPU loops are not available here (see the warning above); the PyTorch code runs instead")
    print(f"compiled CPU loops ready in {time.monotonic() - started:.1f} s: {path}")


def _int_list(value: str) -> list[int]:
    try:
        values = [int(part) for part in value.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r}")
    return values


def _choice_list(choices):
    def parse(value: str) -> list[str]:
        values = [part for part in value.split(",") if part]
        unknown = [part for part in values if part not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(choices)}, got {value!r}")
        return values

    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    options = _options()

    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory of the checkpoints, the log and the final model")
    parser.add_argument(*N_CLUSTERS, dest="n_clusters", type=int, default=6, metavar="K",
                        help="number of clusters k of the training tasks (default: 6)")
    parser.add_argument("--point-dim", type=int, default=8, metavar="D", help="dimension d of the points (default: 8)")
    parser.add_argument("--num-points", type=int, default=128, help="points per training task (default: 128)")
    parser.add_argument("--family", default="normal", choices=options["families"], help="noise family of the training tasks")
    parser.add_argument("--scale", type=float, default=0.1, help="per-coordinate noise scale (default: 0.1)")
    parser.add_argument("--gamma", type=float, default=1.0, help="γ of the distance softmax (default: 1)")
    parser.add_argument("--init-from", default="lloyd", choices=options["initializations"], help="initial weights (default: lloyd)")
    parser.add_argument("--loss-inverse-temperature", type=float, default=10.0, help="λ of the loss (default: 10)")
    parser.add_argument("--num-layers", type=int, default=1, help="layers T before the loss (default: 1)")
    parser.add_argument("--steps", type=int, default=2000, help="optimisation steps (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="tasks per global batch (default: 32)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Adam's learning rate (default: 0.01)")
    parser.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm")
    parser.add_argument(*SEED, dest="seed", type=int, default=0, help="seed of the weights and of the task stream "
                        "(default: 0)")
    parser.add_argument("--log-steps", type=int, default=10, help="log (and step the plateau decay) every N steps")
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps")
    parser.add_argument("--card-tasks", type=int, default=64, help="unseen tasks evaluated for each card (0: none)")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="weight dtype (default: float32, "
                        "unlike the other commands: the weights are learned by gradient steps, not exact)")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from a checkpoint-N directory")
    parser.add_argument("--tensorboard", action="store_true", help="log to TensorBoard as well")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where an accelerator is present")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in a non-empty output directory")
    add_progress_arguments(parser)


def run_train(args: argparse.Namespace) -> None:
    from .learned import train_learned

    result = train_learned(
        args.output, num_clusters=args.n_clusters, point_dim=args.point_dim, num_points=args.num_points,
        inverse_temperature=args.gamma, init_from=args.init_from, loss_inverse_temperature=args.loss_inverse_temperature,
        num_layers=args.num_layers, family=args.family, scale=args.scale, dtype=args.dtype, card_tasks=args.card_tasks,
        max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm, seed=args.seed, log_steps=args.log_steps, save_steps=args.save_steps,
        resume_from_checkpoint=args.resume, overwrite_output_dir=args.overwrite,
        report_to=("jsonl", "tensorboard") if args.tensorboard else ("jsonl",), cpu=args.cpu,
        progress=not args.no_progress,
    )
    if result.history:
        print(f"trained {result.step} steps; last logged loss {result.history[-1]['loss']:.6g}; model in {args.output}")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    options = _options()
    num_points, families, starts, seed = (
        options[name] for name in ("evaluation_num_points", "families", "starts", "evaluation_seed")
    )
    parser.add_argument("checkpoints", nargs="+", help="learned checkpoints (several: training seeds, summarised)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory for table.md, evaluation.json and the figures")
    parser.add_argument("--num-points", type=_int_list, default=list(num_points),
                        help=f"comma-separated n (default: {','.join(map(str, num_points))})")
    parser.add_argument("--families", type=_choice_list(families), default=list(families),
                        help=f"comma-separated noise families (default: {','.join(families)})")
    parser.add_argument("--starts", type=_choice_list(starts), default=list(starts),
                        help=f"comma-separated starts (default: {','.join(starts)})")
    parser.add_argument("--num-tasks", type=int, default=320, help="unseen tasks per setting (default: 320)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the loop and Lloyd iterations (default: 20)")
    parser.add_argument("--scale", type=float, default=0.1, help="per-coordinate noise scale (default: 0.1)")
    parser.add_argument(*SEED, dest="seed", type=int, default=seed,
                        help=f"seed of the task stream (default: {seed})")
    parser.add_argument("--batch-size", type=int, default=32, help="tasks run at once (default: 32)")
    parser.add_argument("--loop", default="reembed", choices=("reembed", "tokens"),
                        help="reembed (default): each step one call on the points and current centroids embedded afresh; "
                        "tokens: one call of --steps layers, the tokens carried by the residual stream")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_progress_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> None:
    from .files import check_new_path, refuse_overlap
    from .learned import evaluate_learned, write_evaluation

    output = Path(args.output)
    refuse_overlap(output, [Path(checkpoint) for checkpoint in args.checkpoints])
    if output.exists() and any(output.iterdir()):
        check_new_path(output, overwrite=args.overwrite)
    evaluation = evaluate_learned(
        args.checkpoints, num_points=args.num_points, families=args.families, starts=args.starts,
        num_tasks=args.num_tasks, num_steps=args.steps, scale=args.scale, seed=args.seed, batch_size=args.batch_size,
        loop=args.loop, progress=not args.no_progress,
    )
    write_evaluation(evaluation, output, overwrite=args.overwrite)
    print(f"wrote {output}/table.md, evaluation.json and the figures")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmeans-transformer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    demo = commands.add_parser(
        "demo",
        help="cluster a built-in example and compare with the reference algorithm",
        description="Cluster a seeded Gaussian mixture (2000 points, d=2, k=5) with a 10-layer Lloyd transformer in "
        "float64 and with the reference loop, and print how they compare.",
    )
    demo.add_argument(*SEED, dest="seed", type=int, default=0, help="seed of the mixture and the initial centroids "
                      "(default: 0)")
    demo.set_defaults(run=run_demo)
    build = commands.add_parser(
        "build-kernels",
        help="build the compiled CPU loops now (otherwise built on first use, about a minute, once per environment)",
        description="Build the compiled CPU loops for this machine and environment, waiting as long as it takes, and "
        "print where they are. Nothing is rebuilt if they are already built; concurrent builds build once.",
    )
    build.set_defaults(run=run_build_kernels)
    convert = commands.add_parser(
        "convert",
        help="write an analytic, validated safetensors checkpoint",
        description="Build the transformer of a clustering algorithm (weights set analytically, no training), check "
        "it against the reference loop on random mixtures, and write it as a Hugging Face checkpoint to DIR.",
    )
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)
    cluster = commands.add_parser(
        "cluster",
        help="cluster the rows of a table (CSV, Parquet, .npy, datasets directory) and write their labels",
        description="Cluster the rows of INPUT with the k-means transformer and write them to OUT with a label column "
        "(-1 for outliers of the trimmed variant), the centroids to a second table and, if asked, a plot and the "
        "fitted model. Every output is checked first: if one exists (without --overwrite) or would overwrite the "
        "input, nothing is fitted or written. Outputs are written under temporary names and renamed into place "
        "together, once all are complete: an interrupt or an error leaves the previous ones.",
    )
    add_cluster_arguments(cluster)
    cluster.set_defaults(run=run_cluster)
    infer = commands.add_parser(
        "infer",
        help="run a checkpoint on a dataset under Accelerate (many problems, or one problem of many points)",
        description="Run a checkpoint on a datasets-library dataset, on one process or several (launch with "
        "torchrun --nproc_per_node N -m kmeans_transformer.cli infer ..., or accelerate launch). Problems mode: each "
        "row is a problem; the results (labels, centroids, inertia per row, in input order) go to a Parquet file or a "
        "datasets directory. Points mode: the rows are the points of one problem, read in chunks; each process "
        "handles its shard and the update's sums are all-reduced. The output appears complete or not at all (built "
        "under a temporary name, renamed into place); a process that fails or stops answering ends the run after "
        "--timeout seconds, every process with a one-line error.",
    )
    add_infer_arguments(infer)
    infer.set_defaults(run=run_infer)
    push = commands.add_parser(
        "push",
        help="push a checkpoint directory to a Hugging Face Hub model repository",
        description="Push the checkpoint in DIR to the Hub (HF_ENDPOINT, default https://huggingface.co) as one commit, "
        "with the token in HF_TOKEN or from `hf auth login`. The card is sent naming the repository; DIR is only read. "
        "A repository that already exists is refused unless --exist-ok.",
    )
    add_push_arguments(push)
    push.set_defaults(run=run_push)
    zoo = commands.add_parser(
        "zoo",
        help="write the standard set of validated checkpoints (every variant at a few sizes) and a README table",
        description="Write one validated checkpoint (as convert does) per variant and size into DIR, with a card each "
        "and a README table of them all, ready to push.",
    )
    add_zoo_arguments(zoo)
    zoo.set_defaults(run=run_zoo)
    train = commands.add_parser(
        "train",
        help="train a learned k-means layer on streamed clustering tasks (Accelerate: CPU, a GPU, several processes)",
        description="Train the four blocks of a learned k-means layer (variant 'learned') on clustering tasks drawn "
        "on the fly, minimising the soft k-means objective of the centroids after --num-layers layers. Writes "
        "checkpoint-N directories (save_pretrained format, optimiser state, a card with an evaluation on unseen "
        "tasks), log.jsonl and the final model. Launch with torchrun --nproc_per_node N -m kmeans_transformer.cli "
        "train ... for several processes (the global batch is split between them).",
    )
    add_train_arguments(train)
    train.set_defaults(run=run_train)
    evaluate = commands.add_parser(
        "evaluate",
        help="loop learned checkpoints on unseen tasks against Lloyd and write a table and figures",
        description="Run learned checkpoints for --steps steps on unseen tasks of each noise family, size and start, "
        "beside Lloyd's algorithm from the same start, and write table.md, evaluation.json and the figures to DIR.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    return parser


def walk_parsers(parser: argparse.ArgumentParser, path=("kmeans-transformer",)):
    """Every (command path, parser) under `parser`, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from walk_parsers(subparser, (*path, name))


# What the command reports as one line (exit status 2); anything else is a bug and keeps its traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors reported in one line (a user's input, file or environment), imported only when one is raised."""
    from .hub import HubError
    from .plotting import MissingDependencyError
    from .points import ProcessGroupError
    from .validation import ValidationError

    return ValueError, TypeError, OSError, ValidationError, MissingDependencyError, HubError, ProcessGroupError


class _Terminated(BaseException):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so that temporary outputs are removed on the way out."""


@contextmanager
def _signals_raise():
    """
    While the command runs, SIGTERM (`kill`; what torchrun sends the other workers when one fails) raises, as SIGINT
    does. Yields `leaving()`, which ignores both from then on: the command is reporting its error and exiting.
    """

    def terminate(signum, frame):
        raise _Terminated

    # A signal that lands in a finaliser (`__del__`, a weakref callback) cannot leave it: Python would print the
    # exception as "ignored" and go on. The hook below asks a thread started here to send it again, to be raised once
    # the finaliser is done. The hook only puts the signal on a queue (no wait: a thread started from the hook makes
    # it wait for the new thread to run, and the signal sent again could land in that wait, inside the hook, and be
    # lost); should the signal sent again still land in the hook, it is caught there and asked for once more.
    resend = {_Terminated: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}
    requests = queue.SimpleQueue()

    def send_again() -> None:
        while (signum := requests.get()) is not None:
            time.sleep(0.01)
            os.kill(os.getpid(), signum)

    def deliver_again(unraisable) -> None:
        signum = resend.get(unraisable.exc_type)
        if signum is None:
            unraisable_hook(unraisable)
            return
        try:
            requests.put(signum)
        except (KeyboardInterrupt, _Terminated) as interrupt:  # the signal sent again, landed before the hook returned
            requests.put(resend[type(interrupt)])

    def leaving() -> None:
        if previous:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    try:
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    unraisable_hook = sys.unraisablehook
    if previous:
        threading.Thread(target=send_again, name="kmeans-transformer signals", daemon=True).start()
        sys.unraisablehook = deliver_again
    try:
        yield leaving
    finally:
        sys.unraisablehook = unraisable_hook
        requests.put(None)  # the thread ends after any signal still asked for
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be restored
                signal.signal(signum, handler)


def report_error(command: str, message) -> None:
    """
    Every error the command reports, in argparse's form: one line `kmeans-transformer COMMAND: error: message`, the
    message starting in lower case (unless it starts with a name in capitals) and without a final full stop.
    """
    message = " ".join(str(message).split()) or "failed"
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    print(f"kmeans-transformer {command}: error: {message.removesuffix('.')}", file=sys.stderr)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed (`--help` and argument errors exit here); nothing beyond the standard library needed."""
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command: its exit status (2 for a user error, reported on one line; 128 + signal if stopped)."""
    if not getattr(args, "verbose", False):
        _quiet_libraries()
    with _signals_raise() as leaving:
        try:
            try:
                args.run(args)
            except Exception as error:
                # From here the command is reporting and leaving: torchrun's SIGTERM (sent once a peer failed) must
                # not interrupt the report, however long the import of the error types takes. One that lands
                # before this line is reported as an interruption below.
                leaving()
                if not isinstance(error, _user_errors()):
                    raise
                report_error(args.command, error)
                return 2
        except (KeyboardInterrupt, _Terminated) as interrupt:
            leaving()
            signum = signal.SIGINT if isinstance(interrupt, KeyboardInterrupt) else signal.SIGTERM
            report_error(args.command, f"interrupted ({signum.name}); no output was left half-written")
            return 128 + signum
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
