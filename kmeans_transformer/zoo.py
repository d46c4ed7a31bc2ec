"""The zoo: a standard set of validated checkpoints, every variant at a few sizes, in one folder ready to push.

Each checkpoint is written by [`convert.convert_checkpoint`] (validated against its variant's reference before it is
written, with a card holding the figures) into `OUTPUT/<name>`; `OUTPUT/README.md` lists them all in one table with
their validation figures and the command that pushes them. The zoo is built in a temporary sibling folder and moved
into place complete (`files.replacing_directory`): an interrupted build leaves no `OUTPUT` (or the previous zoo), and
`overwrite` replaces a previous zoo whole.

Decisions: the zoo is written in float64, where every variant agrees with its reference exactly (identical labels at
every iteration, centroids to rounding). In float32 the soft variant's responsibilities underflow to 0 for far
clusters in 32 or more dimensions (the float64 reference still moves such a centroid), so its float32 trajectories
leave the reference. Each variant has one entry per size for each parameter set of its spec's `zoo_parameters`
(`kmeans_transformer.variants`): Gumbel k-medoids beside the deterministic one; `"gmm"` with `reg_covar = 1e-6`
(scikit-learn's `GaussianMixture` default), without which a component that closes on a single point has zero variance.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .convert import build_model, check_checkpoint_output, convert_checkpoint
from .files import replacing_directory
from .validation import ValidationReport
from .variants import VARIANT_NAMES, get_variant


STANDARD_SIZES = ((3, 2, 10), (8, 16, 20), (32, 64, 10))  # (k, d, T): a picture, a small embedding, a wide one


@dataclass(frozen=True)
class ZooEntry:
    """
    One checkpoint of the zoo: a variant, its size, and the variant parameters it sets (the others default), given
    as a mapping and kept as sorted `(name, value)` pairs.
    """

    variant: str
    num_clusters: int
    point_dim: int
    num_iterations: int
    parameters: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        pairs = self.parameters.items() if isinstance(self.parameters, Mapping) else self.parameters
        object.__setattr__(self, "parameters", tuple(sorted(pairs)))

    @property
    def form(self) -> str | None:
        """The form the parameters select when it is not the variant's default (`"gumbel"` k-medoids), else None."""
        spec = get_variant(self.variant)
        if spec.form_parameter is None:
            return None
        form = dict(self.parameters).get(spec.form_parameter)
        return None if form in (None, spec.parameters[spec.form_parameter]) else form

    @property
    def name(self) -> str:
        suffix = f"-{self.form}" if self.form else ""
        return f"kmeans-transformer-{self.variant}{suffix}-k{self.num_clusters}-d{self.point_dim}-t{self.num_iterations}"


def standard_zoo(variants=VARIANT_NAMES, sizes=STANDARD_SIZES) -> list[ZooEntry]:
    """
    Every variant in `variants` at every `(k, d, T)` of `sizes`, once for each parameter set of its spec's
    `zoo_parameters` (Gumbel k-medoids beside the deterministic one, `"gmm"` with `reg_covar=1e-6`).
    """
    return [
        ZooEntry(variant, k, d, T, parameters)
        for variant in variants
        for k, d, T in sizes
        for parameters in get_variant(variant).zoo_parameters
    ]


def build_zoo(
    output_dir,
    entries: list[ZooEntry] | None = None,
    owner: str | None = None,
    dtype: str = "float64",
    overwrite: bool = False,
    progress: bool = True,
) -> list[tuple[ZooEntry, ValidationReport]]:
    """
    Convert `entries` (default: `standard_zoo()`) into `output_dir/<entry.name>` and write `output_dir/README.md`.
    With `owner`, the cards and the table name the repositories `owner/<entry.name>`. The zoo is built in a
    temporary sibling folder and takes `output_dir`'s place when complete. A non-empty `output_dir` is refused unless
    `overwrite`, which replaces a previous zoo whole (a folder holding anything else is refused, see
    [`check_zoo_output`]). Returns each entry with its validation report.
    """
    output_dir = check_zoo_output(output_dir, overwrite)
    entries = standard_zoo() if entries is None else entries
    names = [entry.name for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Two zoo entries would share a checkpoint name: {repeated}.")
    results = []
    with replacing_directory(output_dir, overwrite=overwrite) as temporary:
        for entry in tqdm(entries, desc="zoo", unit="checkpoint", disable=not progress):
            model = build_model(
                entry.num_clusters, entry.point_dim, entry.num_iterations, variant=entry.variant, dtype=dtype,
                **dict(entry.parameters),
            )
            repo_id = f"{owner}/{entry.name}" if owner else None
            results.append((entry, convert_checkpoint(model, temporary / entry.name, repo_id=repo_id)))
        (temporary / "README.md").write_text(zoo_index(results, owner))
    return results


def check_zoo_output(output_dir, overwrite: bool, how: str = "pass --overwrite") -> Path:
    """
    `output_dir` as a Path if a zoo may be written there, checked before any work: it does not exist, is empty, or
    (with `overwrite`) holds a previous zoo: a `README.md` and checkpoint folders named `kmeans-transformer-...`
    (each holding a checkpoint's files only), which the new zoo replaces whole. Anything else is refused
    (`FileExistsError`), since replacing the folder would delete it.
    """
    output_dir = Path(output_dir)
    if output_dir.is_dir() and not output_dir.is_symlink() and any(output_dir.iterdir()) and overwrite:
        for path in sorted(output_dir.iterdir()):
            if path.name == "README.md" and path.is_file():
                continue
            if path.name.startswith("kmeans-transformer-") and path.is_dir() and not path.is_symlink():
                check_checkpoint_output(path, overwrite=True, how=how)
                continue
            raise FileExistsError(
                f"{output_dir} holds {path.name}, which no zoo does: replacing the folder would delete it; move it or "
                "choose another folder."
            )
        return output_dir
    return check_checkpoint_output(output_dir, overwrite, how)


def zoo_index(results: list[tuple[ZooEntry, ValidationReport]], owner: str | None = None) -> str:
    """The zoo's README: one row per checkpoint with its size and validation figures, and how to push them."""
    namespace = owner or "OWNER"
    lines = [
        "# kmeans-transformer zoo",
        "",
        "Analytic k-means transformer checkpoints: every variant at a few sizes (k clusters, d dimensions, T",
        "iterations). Each was checked against its variant's independent reference on generated Gaussian mixtures",
        "before it was written; its card has the maths, the construction and the figures below.",
        "",
        "| checkpoint | variant | k | d | T | dtype | labels identical | max relative centroid error | reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry, report in results:
        link = f"[{namespace}/{entry.name}](https://huggingface.co/{owner}/{entry.name})" if owner else f"[{entry.name}]({entry.name}/)"
        variant = entry.variant + (f" ({entry.form})" if entry.form else "")
        lines.append(
            f"| {link} | {variant} | {entry.num_clusters} | {entry.point_dim} | {entry.num_iterations} | "
            f"{report.dtype} | {report.label_agreement:.6f} | {report.max_relative_centroid_error:.3e} | "
            f"`{report.reference}` |"
        )
    lines += [
        "",
        "Push them all from this folder (with a token that has write access to the namespace, in `HF_TOKEN` or from",
        "`hf auth login`):",
        "",
        "```bash",
        "for name in kmeans-transformer-*/; do",
        f'    kmeans-transformer push "$name" --repo-id "{namespace}/${{name%/}}"',
        "done",
        "```",
        "",
        "Load one back, with the package or with the code stored in the checkpoint:",
        "",
        "```python",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{namespace}/{results[0][0].name if results else "NAME"}", trust_remote_code=True)',
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["STANDARD_SIZES", "ZooEntry", "build_zoo", "check_zoo_output", "standard_zoo", "zoo_index"]
