"""Problems mode: cluster every row of a dataset, one clustering problem per row, under Accelerate.

A problems dataset is a `datasets.Dataset` whose points column holds, per row, a list of `point_dim`-dimensional
vectors (`n` varies from row to row) and, optionally, a centroids column with the `num_clusters` initial centroids of
each row. [`infer_problems`] checks the whole dataset first ([`validate_problems`], on the Arrow table, before any
model work), then runs the model on padded batches of problems and returns one result row per problem, in input order:

    problem    int                  the row's index in the input
    labels     list of n ints       the cluster of each point
    centroids  k lists of d floats  the centroids after the last iteration
    inertia    float                the k-means objective of the returned centroids

Under several processes (`torchrun`, `accelerate launch`) the batches are shared out by the `Accelerator`, the results
gathered, and the main process alone gets the dataset; the others get None.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .files import check_new_path, refuse_overlap, replacing_directory, replacing_file
from .points import OUTPUT_MARKER, Processes, is_points_output
from .tabular import (
    check_output_directory,
    check_output_path,
    is_list_type,
    is_number_type,
    load_saved_dataset,
    refuse_dataset_dict,
    refuse_partial,
    require_columns,
)


LOAD_SUFFIXES = (".parquet", ".jsonl", ".json")


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def validate_problems(dataset, points_column: str, centroids_column: str | None, config, weights_column=None) -> None:
    """
    Check a problems dataset against a model's `config` without running the model; raise a one-line `ValueError` on
    the first problem found:

    - the dataset is empty, or a named column is missing (the message lists the available columns);
    - a row of `points_column` is missing, or is not a list of equally long vectors of numbers (the row is named);
    - the points have a dimension other than `config.point_dim`;
    - a coordinate is NaN, infinite or missing (the row is named);
    - a row has fewer than `config.num_clusters` points;
    - a row of `centroids_column` is not `num_clusters` vectors of dimension `point_dim` of finite numbers.

    The checks run with `pyarrow.compute` on whole columns of the dataset's Arrow table, not row by row.
    """
    _validated_table(dataset, points_column, centroids_column, config, weights_column)


def _validated_table(dataset, points_column, centroids_column, config, weights_column=None) -> pa.Table:
    """The checked columns as an Arrow table, rows in the dataset's order (see `validate_problems`)."""
    import datasets

    refuse_dataset_dict(dataset)
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"Expected a datasets.Dataset, got {type(dataset).__name__}.")
    columns = [points_column] + ([centroids_column] if centroids_column is not None else [])
    columns += [weights_column] if weights_column is not None else []
    require_columns(dataset.column_names, columns, "The dataset")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is no problem to cluster.")
    if len(set(columns)) < len(columns):
        raise ValueError(f"The points, the centroids and the weights must be different columns, got {columns}.")

    # The rows in the dataset's order (an indices mapping from select/shuffle is applied), only the needed columns.
    table = dataset.select_columns(columns).with_format("arrow")[:]
    k, d = config.num_clusters, config.point_dim
    counts = _check_vectors(table.column(points_column), points_column, "points", d)
    too_few = np.flatnonzero(counts < k)
    if too_few.size:
        row = int(too_few[0])
        raise ValueError(
            f"Row {row} of column {points_column!r} has {int(counts[row])} points, fewer than num_clusters={k}; "
            f"every problem needs at least {k} points ({too_few.size} rows have too few)."
        )
    if centroids_column is not None:
        counts = _check_vectors(table.column(centroids_column), centroids_column, "centroids", d)
        wrong = np.flatnonzero(counts != k)
        if wrong.size:
            row = int(wrong[0])
            raise ValueError(
                f"Row {row} of column {centroids_column!r} has {int(counts[row])} centroids, but the model has "
                f"num_clusters={k}: each row needs {k} centroids of dimension {d}."
            )
    if weights_column is not None:
        _check_weights(table.column(weights_column), weights_column, _point_counts(table, points_column))
    return table


def _point_counts(table: pa.Table, points_column: str) -> np.ndarray:
    return pc.list_value_length(table.column(points_column).combine_chunks()).to_numpy(zero_copy_only=False)


def _check_weights(column: pa.ChunkedArray, name: str, counts: np.ndarray) -> None:
    """Per row, one finite number >= 0 per point, with a positive sum (`ValueError` naming the row otherwise)."""
    rows = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not (is_list_type(rows.type) and is_number_type(rows.type.value_type)):
        raise ValueError(
            f"Column {name!r} must hold, per row, a list of numbers (one weight per point); it holds {rows.type}."
        )
    if rows.null_count:
        raise ValueError(f"Row {_first_true(rows.is_null())} of column {name!r} is missing.")
    lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != counts)
    if wrong.size:
        row = int(wrong[0])
        raise ValueError(f"Row {row} of column {name!r} has {int(lengths[row])} weights for {int(counts[row])} points.")
    values = pc.list_flatten(rows).to_numpy(zero_copy_only=False).astype(np.float64)
    parents = pc.list_parent_indices(rows).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        row = int(parents[bad[0]])
        raise ValueError(f"Row {row} of column {name!r} has a weight that is not a finite number >= 0.")
    totals = np.bincount(parents, weights=values, minlength=len(counts))
    if (totals <= 0).any():
        raise ValueError(f"Row {int(np.flatnonzero(totals <= 0)[0])} of column {name!r} has weights that sum to 0.")


def _check_vectors(column: pa.ChunkedArray, name: str, what: str, dim: int) -> np.ndarray:
    """Check one column of lists of `dim`-dimensional finite vectors; return the number of vectors of each row."""
    shape = f"a list of {dim}-dimensional vectors of numbers"
    outer_type = column.type
    if not (is_list_type(outer_type) and is_list_type(outer_type.value_type)):
        raise ValueError(f"Column {name!r} must hold, per row, {shape}; it holds {outer_type}.")
    value_type = outer_type.value_type.value_type
    if not is_number_type(value_type):
        raise ValueError(f"Column {name!r} must hold, per row, {shape}; its values are of type {value_type}.")
    rows = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if rows.null_count:
        row = _first_true(rows.is_null())
        raise ValueError(f"Row {row} of column {name!r} is missing: each row needs {shape}.")
    counts = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    vectors = pc.list_flatten(rows)
    vector_rows = pc.list_parent_indices(rows).to_numpy(zero_copy_only=False)
    if vectors.null_count:
        row = int(vector_rows[_first_true(vectors.is_null())])
        raise ValueError(f"Row {row} of column {name!r} has a missing {what[:-1]}: each row needs {shape}.")
    lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
    off = np.flatnonzero(lengths != dim)
    if off.size:
        row = int(vector_rows[off[0]])
        row_lengths = np.unique(lengths[vector_rows == row])
        if row_lengths.size > 1:
            raise ValueError(
                f"Row {row} of column {name!r} has {what} of different dimensions "
                f"({', '.join(map(str, row_lengths))}): each row needs {shape}."
            )
        raise ValueError(
            f"Row {row} of column {name!r} has {what} of dimension {int(row_lengths[0])}, but the model was built "
            f"for point_dim={dim}."
        )
    values = pc.list_flatten(vectors)
    if values.null_count or pa.types.is_floating(value_type):
        finite = pc.is_finite(values) if pa.types.is_floating(value_type) else pc.is_valid(values)
        bad = pc.invert(pc.fill_null(finite, False))
        if pc.any(bad).as_py():
            row = int(vector_rows[_first_true(bad) // dim])
            raise ValueError(f"Row {row} of column {name!r} has NaN, infinite or missing values in its {what}.")
    return counts


def _first_true(mask) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


# ---------------------------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------------------------


def _vectors_array(rows: pa.Array, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """All vectors of `rows` (checked lists of `dim`-vectors) as one `(total, dim)` tensor, and each row's count."""
    counts = pc.list_value_length(rows).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(pc.list_flatten(rows)).to_numpy(zero_copy_only=False)
    values = np.array(values, copy=not values.flags.writeable or not values.flags.c_contiguous)
    return torch.from_numpy(values.reshape(-1, dim)).to(dtype), counts


class _ProblemCollator:
    """Turns a list of row indices into a padded batch: points, attention mask, centroids, row indices and sizes."""

    def __init__(self, table: pa.Table, points_column: str, centroids_column: str | None, dim: int, dtype,
                 weights_column=None):
        self.points = table.column(points_column)
        self.centroids = None if centroids_column is None else table.column(centroids_column)
        self.weights = None if weights_column is None else table.column(weights_column)
        self.dim, self.dtype = dim, dtype

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        take = pa.array(indices, type=pa.int64())
        flat, counts = _vectors_array(self.points.take(take).combine_chunks(), self.dim, self.dtype)
        batch_size, width = len(indices), int(counts.max())
        # a point's position in the padded batch: its row's index times `width` plus its rank inside the row
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        slots = np.repeat(np.arange(batch_size) * width, counts) + np.arange(flat.shape[0]) - starts
        slots = torch.from_numpy(slots)
        points = flat.new_zeros(batch_size * width, self.dim).index_copy_(0, slots, flat)
        mask = torch.zeros(batch_size * width, dtype=torch.long).index_fill_(0, slots, 1)
        batch = {
            "points": points.view(batch_size, width, self.dim),
            "attention_mask": mask.view(batch_size, width),
            "problem": torch.as_tensor(indices, dtype=torch.long),
            "num_points": torch.from_numpy(counts),
        }
        if self.centroids is not None:
            centroids, _ = _vectors_array(self.centroids.take(take).combine_chunks(), self.dim, self.dtype)
            batch["centroids"] = centroids.view(batch_size, -1, self.dim)
        if self.weights is not None:
            weights = pc.list_flatten(self.weights.take(take).combine_chunks()).to_numpy(zero_copy_only=False)
            weights = torch.from_numpy(np.array(weights, dtype=np.float64)).to(self.dtype)
            padded = weights.new_zeros(batch_size * width).index_copy_(0, slots, weights)
            batch["sample_weight"] = padded.view(batch_size, width)
        return batch


def infer_problems(
    model,
    dataset,
    *,
    points_column: str = "points",
    centroids_column: str | None = None,
    batch_size: int = 64,
    num_iterations: int | None = None,
    accelerator=None,
    progress: bool = True,
    weights_column: str | None = None,
):
    """
    Cluster every row of `dataset` with `model`, a [`KMeansTransformerModel`]: one independent problem per row.

    Args:
        model: the model; put in eval mode and moved to `accelerator.device` (inference only: every process runs its
            own copy on its own batches and no gradient is exchanged, so the model is not wrapped for distributed
            training).
        dataset (`datasets.Dataset`): `points_column` holds, per row, a list of `point_dim`-dimensional vectors
            (the number of points may differ between rows, but each row needs at least `num_clusters`);
            `centroids_column`, if given, the row's `num_clusters` initial centroids. Without it, the model's
            default initial centroids are used (the stored fitted ones, else the first `num_clusters` points of each
            row). Values are cast to the model's dtype.
        batch_size (`int`): problems per batch and process; each batch is padded to its largest problem.
        num_iterations (`int`, *optional*): overrides `config.num_iterations` (shared layers only).
        accelerator (`accelerate.Accelerator`, *optional*): shares the batches out between processes and gathers the
            results. Defaults to a new `Accelerator()`, which picks up the launcher's processes and device. Its
            `even_batches` must be True (the default).
        progress (`bool`): show a progress bar over the batches, on the main process only.
        weights_column (`str`, *optional*): a column holding, per row, one non-negative sample weight per point
            (the model's `sample_weight`: each point counts as its weight; the inertia is weighted).

    Returns:
        On the main process, a `datasets.Dataset` with one row per input row, in input order, and columns `problem`
        (the input row's index), `labels` (one int per point), `centroids` (`num_clusters` lists of `point_dim`
        floats) and `inertia`; float64 for a float64 model, else float32. None on the other processes.

    The whole dataset is checked by [`validate_problems`] before the model runs; its errors are `ValueError`s.
    """
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    config = model.config
    table = _validated_table(dataset, points_column, centroids_column, config, weights_column)
    accelerator = accelerator if accelerator is not None else Accelerator()
    if not accelerator.even_batches:
        raise ValueError("infer_problems needs an Accelerator with even_batches=True (the default).")

    dtype = model.dtype
    collate = _ProblemCollator(table, points_column, centroids_column, config.point_dim, dtype, weights_column)
    loader = DataLoader(range(table.num_rows), batch_size=batch_size, shuffle=False, collate_fn=collate)
    loader = accelerator.prepare_data_loader(loader)
    model = model.to(accelerator.device).eval()

    processes = Processes.of(accelerator)  # its collectives fail as one-line ProcessGroupErrors
    parts = {"problem": [], "num_points": [], "labels": [], "centroids": [], "inertia": []}
    bar = tqdm(loader, total=len(loader), desc="problems", unit="batch", disable=not (progress and accelerator.is_main_process))
    with torch.no_grad():
        for batch in bar:
            output = model(
                batch["points"],
                batch.get("centroids"),
                attention_mask=batch["attention_mask"],
                num_iterations=num_iterations,
                sample_weight=batch.get("sample_weight"),
            )
            labels = processes.collective(accelerator.pad_across_processes, output.labels, dim=1, pad_index=-1)
            gathered = processes.collective(
                accelerator.gather_for_metrics,
                (batch["problem"], batch["num_points"], labels, output.centroids, output.inertia),
            )
            for key, value in zip(("problem", "num_points", "labels", "centroids", "inertia"), gathered, strict=True):
                parts[key].append(value.cpu())
    bar.close()
    if not accelerator.is_main_process:
        return None
    return _results_dataset(parts, dtype)


def _results_dataset(parts: dict[str, list[torch.Tensor]], dtype: torch.dtype):
    """The gathered batches as a `datasets.Dataset`, rows sorted by problem, padding removed."""
    import datasets
    from datasets.table import InMemoryTable

    float_type = np.float64 if dtype == torch.float64 else np.float32
    problem = torch.cat(parts["problem"]).numpy()
    counts = torch.cat(parts["num_points"]).numpy()
    centroids = torch.cat(parts["centroids"]).to(torch.float64).numpy().astype(float_type)
    inertia = torch.cat(parts["inertia"]).to(torch.float64).numpy().astype(float_type)
    # each batch's labels, trimmed of its padding column by column, then of each row's padding
    labels = np.concatenate(
        [block.numpy()[np.arange(block.shape[1]) < count[:, None]] for block, count in zip(
            parts["labels"], np.split(counts, np.cumsum([len(block) for block in parts["labels"]])[:-1]), strict=True
        )]
    )
    order = np.argsort(problem, kind="stable")
    if not np.array_equal(problem[order], np.arange(len(problem))):
        raise RuntimeError("The gathered results do not cover each problem exactly once.")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    sorted_counts = counts[order]
    sorted_offsets = np.concatenate([[0], np.cumsum(sorted_counts)])
    ranks = np.arange(sorted_offsets[-1]) - np.repeat(sorted_offsets[:-1], sorted_counts)
    label_index = np.repeat(offsets[:-1][order], sorted_counts) + ranks
    num_clusters, dim = centroids.shape[1:]
    centroid_values = pa.array(centroids[order].reshape(-1))
    table = pa.table(
        {
            "problem": pa.array(problem[order].astype(np.int64)),
            "labels": pa.ListArray.from_arrays(
                pa.array(sorted_offsets.astype(np.int32)),
                pa.array(labels[label_index].astype(np.int64)),
            ),
            "centroids": pa.ListArray.from_arrays(
                pa.array(np.arange(0, len(order) * num_clusters + 1, num_clusters, dtype=np.int32)),
                pa.ListArray.from_arrays(
                    pa.array(np.arange(0, len(order) * num_clusters * dim + 1, dim, dtype=np.int32)), centroid_values
                ),
            ),
            "inertia": pa.array(inertia[order]),
        }
    )
    return datasets.Dataset(InMemoryTable(table))


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def write_problem_results(results, path, overwrite: bool = False) -> None:
    """
    Write the dataset returned by [`infer_problems`]: a `.parquet` path gets one Parquet file, any other path a
    directory written by `save_to_disk`. The output is written under a temporary name next to `path` and takes its
    place only when complete (`files.replacing_file`, `files.replacing_directory`): an error or an interrupt leaves
    `path` as it was. An existing path is refused (`FileExistsError`) unless `overwrite`, which replaces a Parquet
    file, or a directory that is empty or holds a `save_to_disk` dataset, whole. `results=None` (what the other
    processes of a multi-process run get) writes nothing.
    """
    import datasets

    if results is None:
        return
    if not isinstance(results, datasets.Dataset):
        raise TypeError(f"Expected the datasets.Dataset of infer_problems, got {type(results).__name__}.")
    path = check_problem_results_path(path, overwrite, how="pass overwrite=True")
    sources = [Path(entry["filename"]).parent for entry in results.cache_files]
    refuse_overlap(path, sources, what="output")
    if path.suffix.lower() == ".parquet":
        with replacing_file(path, overwrite) as temporary:
            results.to_parquet(str(temporary))
    else:
        with replacing_directory(path, overwrite) as temporary:
            results.save_to_disk(str(temporary))


def check_problem_results_path(path, overwrite: bool = False, how: str = "pass --overwrite") -> Path:
    """
    Check, before any work, where [`write_problem_results`] is to write: a `.parquet` file, or else a `save_to_disk`
    directory; an existing one only with `overwrite`, and a directory only if it is empty or a saved dataset.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        if path.is_dir() and not path.is_symlink():
            raise FileExistsError(f"{path} is a directory, not a Parquet file; refusing to replace it.")
        return check_output_path(path, (".parquet",), overwrite, how=how)
    check_new_path(path, overwrite, how)
    if path.exists() and not path.is_symlink() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a dataset directory; refusing to replace it.")
    return check_output_directory(path, overwrite, _is_saved_dataset, "a saved dataset", how)


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / "state.json").is_file()


def load_problems(path):
    """
    Open a problems dataset: a directory written by `datasets.Dataset.save_to_disk`, a `.parquet` file or a
    `.jsonl`/`.json` file (JSON Lines, one problem per line). A missing path, another file type, a `DatasetDict`
    directory (its splits are named: give one split's directory), an incomplete output (a temporary `.….partial` name
    left by a killed run, a directory without the `state.json` that `save_to_disk` writes last), a points-mode output
    or a file that cannot be parsed is a one-line `ValueError`.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    refuse_partial(path)
    if path.is_dir():
        if (path / OUTPUT_MARKER).is_file() or is_points_output(path):
            raise ValueError(
                f"{path} is a points-mode output (centroids.parquet, summary.json, labels/), not a problems dataset."
            )
        return load_saved_dataset(path)
    suffix = path.suffix.lower()
    if suffix not in LOAD_SUFFIXES:
        raise ValueError(
            f"Cannot read {path}: unsupported file type {path.suffix or '(none)'!r}; expected "
            f"{', '.join(LOAD_SUFFIXES)} or a directory written by datasets' save_to_disk."
        )
    try:
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path))
        return datasets.Dataset.from_json(str(path))
    except (OSError, ValueError, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as error:
        kind = "Parquet" if suffix == ".parquet" else "JSON Lines"
        reason = " ".join(str(error.__cause__ or error).split())
        raise ValueError(f"Cannot read {path} as {kind} (an incomplete or corrupt file?): {reason}") from error


__all__ = [
    "check_problem_results_path",
    "infer_problems",
    "load_problems",
    "validate_problems",
    "write_problem_results",
]
