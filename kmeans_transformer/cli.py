"""The `kmeans-transformer` command: `demo` and `convert`."""

import argparse
import sys

import numpy as np
import torch

from .configuration_kmeans_transformer import MEDOID_SELECTIONS, VARIANTS
from .convert import DTYPES, ValidationError, build_model, convert_checkpoint, gaussian_mixture
from .reference import lloyd


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="lloyd", choices=VARIANTS, help="clustering algorithm (default: lloyd)")
    parser.add_argument("--num-clusters", type=int, required=True, help="number of clusters k")
    parser.add_argument("--point-dim", type=int, required=True, help="dimension d of the points")
    parser.add_argument("--num-iterations", type=int, required=True, help="number of iterations T (layers)")
    parser.add_argument("--separate-layers", action="store_true", help="T separate layers instead of one looped layer")
    variant = parser.add_argument_group("variant parameters (each only for the variants that read it)")
    variant.add_argument("--inverse-temperature", type=float, help="stiffness γ (soft, sparse, gumbel kmedoids, softmax paths)")
    variant.add_argument("--trim-quantile", type=float, help="trimmed: per-cluster quantile in (0, 1] (default 0.95)")
    variant.add_argument("--trim-fraction", type=float, help="trimmed: global fraction in [0, 1) instead of the quantile")
    variant.add_argument("--medoid-selection", choices=MEDOID_SELECTIONS, help="kmedoids: deterministic (default) or gumbel")
    variant.add_argument("--reg-covar", type=float, help="gmm: added to every variance (default 0)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weight dtype (default: float32)")
    parser.add_argument("--output", required=True, help="checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")


def run_convert(args: argparse.Namespace) -> None:
    model = build_model(
        num_clusters=args.num_clusters,
        point_dim=args.point_dim,
        num_iterations=args.num_iterations,
        variant=args.variant,
        dtype=args.dtype,
        share_layers=not args.separate_layers,
        inverse_temperature=args.inverse_temperature,
        trim_quantile=args.trim_quantile,
        trim_fraction=args.trim_fraction,
        medoid_selection=args.medoid_selection,
        reg_covar=args.reg_covar,
    )
    report = convert_checkpoint(model, args.output, overwrite=args.overwrite)
    print(
        f"wrote {args.output}: {args.variant}, k={args.num_clusters}, d={args.point_dim}, T={args.num_iterations}, "
        f"{args.dtype}; validated against {report.reference} on {report.num_problems} mixtures: labels identical "
        f"{report.label_agreement:.4%}, max relative centroid error {report.max_relative_centroid_error:.2e}"
        + (f", outlier flags identical {report.outlier_agreement:.4%}" if report.outlier_agreement is not None else "")
        + (
            f", max relative variance/weight error {report.max_relative_parameter_error:.2e}"
            if report.max_relative_parameter_error is not None
            else ""
        )
    )


@torch.no_grad()
def run_demo(args: argparse.Namespace) -> None:
    """Cluster a built-in Gaussian mixture with the transformer and with the reference loop, and compare."""
    generator = np.random.default_rng(args.seed)
    k, d, iterations = 5, 2, 10
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmeans-transformer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="cluster a built-in example and compare with the reference algorithm")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)
    convert = commands.add_parser("convert", help="write an analytic, validated safetensors checkpoint")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileExistsError, ValidationError) as error:
        print(f"kmeans-transformer {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
