"""Points mode: one clustering problem whose points are the rows of a dataset too large for one device.

`cluster_points` runs the model's iterations over a dataset read in chunks, on one process or on every process of an
Accelerate (`torch.distributed`) launch. Memory holds the centroids and one chunk of points (with its tokens and its
`(chunk, k)` assignment), never all points. One iteration is:

1. every process reads its shard chunk by chunk and lets the model assign each chunk to the current centroids
   (`model(chunk, centroids, num_iterations=0)`, the assignment head), whose `assignments` `(chunk, k)` are the
   weights of the update attention on those points;
2. it adds up the update attention's numerators `Σ_i w_ij x_i` `(k, d)` and denominators `Σ_i w_ij` `(k,)` in float64
   (`update_statistics`);
3. one all-reduce of these `k (d + 1)` numbers sums them over the processes;
4. every process sets `c_j = numerator_j / denominator_j`, and an empty cluster (denominator 0) keeps `c_j`: the
   update block's rule.

This is exactly the model's iteration for the variants whose update is a ratio of sums over points: `"lloyd"` (one-hot
weights: the mean of the members), `"soft"` (responsibilities as weights) and `"spherical"` (points and centroids unit
normalised, as the model's embeddings do; the mean is normalised afterwards and a mean of norm 0 keeps the previous
direction, as `KMeansTransformerCentroidNorm` does). The other variants' updates (medoids, sparsemax, trimming, the
mixture's variances) are not ratios of sums and are refused. Sums are taken in a different order than in one forward
pass, so results agree with it to rounding, not bit for bit (the hard assignment itself, lowest index on ties, is the
model's).

Reading. The dataset is a `datasets.Dataset`, a `datasets.IterableDataset` (streaming), a `.parquet` file (read with
`pyarrow.parquet.ParquetFile.iter_batches`) or a directory written by `Dataset.save_to_disk`. Process `rank` of `world`
reads a contiguous block of rows (the rows `Dataset.shard(world, rank, contiguous=True)` keeps; for a Parquet file
only the row groups that overlap its block), or, for an `IterableDataset`, every `world`-th row starting at `rank`
(`split_dataset_by_node(..., strategy="examples")`, which knows each row's global index; every process then streams
the whole dataset and skips the others' rows). A Parquet row group is decoded as a whole: memory also holds one row
group of the selected columns (pre-buffering is turned off: it would read the whole block ahead).

Validation. Before the first model call, a reading pass over the shard checks every row (nulls, NaN and infinite
values, lists of the wrong length) and counts the rows; the processes agree on the outcome with one small all-reduce,
so that all of them raise together. Reading costs far less than a model pass (see `docs/points_memory.md`), and a bad
row is then reported before any work, naming its global row index and the row range of its chunk.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .attention import unit_normalize
from .tabular import load_saved_dataset


SUPPORTED_VARIANTS = ("lloyd", "soft", "spherical")


@dataclass
class PointsResult:
    """
    The outcome of `cluster_points`.

    centroids: `(k, d)` the centroids after the last iteration (unit vectors for `"spherical"`).
    inertia: the sum over all points of the squared distance to the centroid of their label, under the returned
        centroids (on the unit-normalised points for `"spherical"`), as the model's `inertia`.
    cluster_sizes: `(k,)` the number of points labelled with each cluster under the returned centroids.
    num_iterations: the number of iterations run.
    num_points: the number of points (rows) in the dataset.
    """

    centroids: np.ndarray
    inertia: float
    cluster_sizes: np.ndarray
    num_iterations: int
    num_points: int


def update_statistics(assignments: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The sums of the update attention over a set of points, in float64.

    `assignments` `(n, k)`: each point's update weights (one-hot rows for `"lloyd"` and `"spherical"`, responsibilities
    for `"soft"`); `points` `(n, d)`: the points as the model sees them (unit normalised for `"spherical"`). Returns the
    numerators `assignments.T @ points` `(k, d)` and the denominators `assignments.sum(0)` `(k,)`. Sums over disjoint
    sets of points add up, so a dataset's statistics are the sum of its chunks' and of its processes' statistics; the
    new centroid of cluster `j` is `numerators[j] / denominators[j]` (kept as it is when the denominator is 0).
    """
    weights, values = assignments.to(torch.float64), points.to(torch.float64)
    return weights.transpose(0, 1) @ values, weights.sum(dim=0)


def cluster_points(
    model,
    dataset,
    *,
    columns=None,
    chunk_size: int = 65536,
    num_iterations: int | None = None,
    accelerator=None,
    progress: bool = True,
    labels_output=None,
) -> PointsResult:
    """
    Cluster the rows of `dataset` as one problem with `model`, reading `chunk_size` rows at a time (see the module
    docstring for the iteration and the reading).

    Args:
        model: a `KMeansTransformerModel` of variant `"lloyd"`, `"soft"` or `"spherical"` with `share_layers=True`.
        dataset: a `datasets.Dataset`, a `datasets.IterableDataset`, a `.parquet` file or a `save_to_disk` directory.
        columns: the feature columns, in order; a column of equally long lists of numbers (an embedding) gives one
            coordinate per entry. Default: every numeric (integer or float, not boolean) column, in table order.
        chunk_size: rows per model call. Each call holds about `chunk_size * (2d + k + 1)` numbers per token tensor,
            several tensors at once.
        num_iterations: the number of iterations, default `model.config.num_iterations`.
        accelerator: an `accelerate.Accelerator`; without one, `accelerate.PartialState()` (one process unless the
            script was launched on several).
        progress: show a progress bar over the iterations (main process only).
        labels_output: a directory; if given, every process writes the labels of its rows under the final centroids,
            with their global row index, to `labels_output/part-{rank:05d}-of-{world:05d}.parquet` (columns `index`
            and `label`, written chunk by chunk).

    Returns:
        A `PointsResult`, identical on every process.

    Initial centroids: the model's stored fitted centroids if `config.fitted_centroids`, else the first `k` rows of
    the whole dataset (the model's default for one problem), read by every process alike.
    """
    config = model.config
    k, d = config.num_clusters, config.point_dim
    if config.variant not in SUPPORTED_VARIANTS:
        raise ValueError(
            f"Points mode supports the variants {', '.join(SUPPORTED_VARIANTS)}, whose update is a ratio of sums over "
            f"the points; variant {config.variant!r} is not one of them."
        )
    if not config.share_layers:
        raise ValueError("Points mode loops the model's assignment one iteration at a time: it needs share_layers=True.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}.")
    if num_iterations is None:
        num_iterations = config.num_iterations
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"`num_iterations` must be an integer >= 0, got {num_iterations!r}.")

    if accelerator is None:
        from accelerate import PartialState

        state = PartialState()
    else:
        state = accelerator.state
    rank, world, is_main = state.process_index, state.num_processes, state.is_main_process

    def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return tensor
        if accelerator is not None:
            return accelerator.reduce(tensor, reduction="sum")
        from accelerate.utils import reduce

        return reduce(tensor, reduction="sum")

    dtype = model.embeddings.cluster_embeddings.dtype
    device = model.embeddings.cluster_embeddings.device
    source = _open_source(dataset)
    features = _select_features(source, columns)

    # The first k rows: the initial centroids, and the dimension and size checks.
    head = source.head(k, features.arrow_columns)
    if head.num_rows == 0:
        raise ValueError(f"{source.name} has no rows.")
    features.resolve_widths(head, source.name)
    if features.dim != d:
        raise ValueError(
            f"{source.name} gives points of dimension {features.dim} (columns {', '.join(features.names)}), but the "
            f"model was built for point_dim={d}."
        )
    if head.num_rows < k:
        raise ValueError(
            f"num_clusters={k} is larger than the number of points ({head.num_rows}) of {source.name}: points mode "
            "needs at least k points."
        )
    fitted = model.embeddings.fitted_parameters().get("centroids")
    if fitted is not None:
        initial = fitted.detach().to(dtype=dtype, device=device)
    else:
        initial = torch.as_tensor(features.values(head, np.arange(head.num_rows), source.name)).to(dtype=dtype, device=device)
    if not bool(torch.isfinite(initial).all()):
        raise ValueError("The model's stored fitted centroids contain NaN or infinite values.")

    spherical = config.variant == "spherical"
    shard = source.shard(rank, world, chunk_size, features.arrow_columns)
    num_points = _validate_shard(shard, features, source.name, device, reduce_sum, nonzero=spherical)

    if spherical and bool((torch.linalg.vector_norm(initial, dim=-1) == 0).any()):
        raise ValueError("Spherical k-means needs non-zero centroids: an initial centroid has norm 0 and no direction.")
    centroids = unit_normalize(initial) if spherical else initial.clone()

    def chunks() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for indices, table in shard():
            values = torch.as_tensor(features.values(table, indices, source.name)).to(dtype=dtype, device=device)
            yield indices, (unit_normalize(values) if spherical else values)

    from tqdm.auto import tqdm

    with torch.no_grad():
        for _ in tqdm(range(num_iterations), desc="points mode", unit="iteration", disable=not (progress and is_main)):
            statistics = torch.zeros(k, d + 1, dtype=torch.float64, device=device)
            for _, points in chunks():
                weights, _ = _assign(model, points, centroids)
                numerators, denominators = update_statistics(weights, points)
                statistics[:, :d] += numerators
                statistics[:, d] += denominators
            statistics = reduce_sum(statistics)
            centroids = _new_centroids(statistics[:, :d], statistics[:, d], centroids, spherical)

        # The final pass: labels, sizes and inertia of the returned centroids.
        totals = torch.zeros(k + 1, dtype=torch.float64, device=device)
        writer = None
        try:
            if labels_output is not None:
                directory = Path(labels_output)
                directory.mkdir(parents=True, exist_ok=True)
                schema = pa.schema([("index", pa.int64()), ("label", pa.int64())])
                writer = pq.ParquetWriter(directory / f"part-{rank:05d}-of-{world:05d}.parquet", schema)
            for indices, points in chunks():
                _, labels = _assign(model, points, centroids)
                labelled = labels >= 0
                nearest = centroids[labels.clamp(min=0)]
                distances = ((points - nearest) ** 2).sum(dim=-1) * labelled
                totals[k] += distances.to(torch.float64).sum()
                totals[:k] += torch.bincount(labels[labelled], minlength=k).to(torch.float64)
                if writer is not None:
                    writer.write_table(
                        pa.table({"index": pa.array(indices, pa.int64()), "label": pa.array(labels.cpu().numpy(), pa.int64())},
                                 schema=schema)
                    )
        finally:
            if writer is not None:
                writer.close()
        totals = reduce_sum(totals)

    return PointsResult(
        centroids=centroids.cpu().numpy(),
        inertia=float(totals[k]),
        cluster_sizes=totals[:k].cpu().numpy().round().astype(np.int64),
        num_iterations=num_iterations,
        num_points=num_points,
    )


def _assign(model, points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The model's assignment of `points` `(n, d)` to `centroids` `(k, d)`: weights `(n, k)` and labels `(n,)`. A chunk of
    fewer than `k` points (the model needs at least `k` per problem) is completed with the centroids themselves as
    extra points, whose rows are dropped: a point's assignment depends only on the point and the centroids.
    """
    n, k = points.shape[0], centroids.shape[0]
    padded = points if n >= k else torch.cat([points, centroids], dim=0)
    output = model(padded, centroids, num_iterations=0)
    return output.assignments[0, :n], output.labels[0, :n]


def _new_centroids(numerators, denominators, centroids, spherical: bool) -> torch.Tensor:
    """The update block's rule: the weighted mean, or the centroid itself where no point has weight for it."""
    occupied = denominators > 0
    means = numerators / torch.where(occupied, denominators, torch.ones_like(denominators))[:, None]
    previous = centroids.to(torch.float64)
    if spherical:
        norms = torch.linalg.vector_norm(means, dim=-1, keepdim=True)
        means = torch.where(norms > 0, unit_normalize(means), previous)
    return torch.where(occupied[:, None], means, previous).to(centroids.dtype)


def _validate_shard(shard, features, name: str, device, reduce_sum, nonzero: bool = False) -> int:
    """
    Read the shard once, checking every row (and, if `nonzero`, that no point is 0: spherical k-means needs a
    direction); agree across processes; return the total number of rows.
    """
    rows, problem = 0, None
    try:
        for indices, table in shard():
            values = features.values(table, indices, name)
            if nonzero:
                zero = np.flatnonzero(~values.any(axis=1))
                if len(zero):
                    raise ValueError(
                        f"Spherical k-means needs non-zero points, but row {indices[zero[0]]} of {name} is 0 and has no "
                        "direction."
                    )
            rows += table.num_rows
    except ValueError as error:
        problem = error
    outcome = reduce_sum(torch.tensor([rows, 0 if problem is None else 1], dtype=torch.float64, device=device))
    if problem is not None:
        raise problem
    if outcome[1] > 0:
        raise ValueError(f"{name} has invalid rows in the part read by another process (see its error).")
    return int(outcome[0])


# ---------------------------------------------------------------------------------------------------------------------
# Sources: the first rows of the whole dataset, and one process's rows in chunks with their global row indices.
# ---------------------------------------------------------------------------------------------------------------------


def _contiguous_block(num_rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows `[start, end)` of `rank`, as `datasets.Dataset.shard(world, rank, contiguous=True)` splits them."""
    div, mod = divmod(num_rows, world)
    start = div * rank + min(rank, mod)
    return start, start + div + (1 if rank < mod else 0)


class _ParquetSource:
    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        try:
            # pre_buffer=False: pre-buffering reads every selected row group ahead, i.e. the whole block into memory
            self.file = pq.ParquetFile(path, pre_buffer=False)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"Cannot read {path} as Parquet: {' '.join(str(error).split())}") from error
        self.schema = self.file.schema_arrow

    def head(self, k: int, columns: list[str]) -> pa.Table:
        batches, rows = [], 0
        for batch in self.file.iter_batches(batch_size=max(k, 1), columns=columns):
            batches.append(batch)
            rows += batch.num_rows
            if rows >= k:
                break
        if not batches:
            return pa.schema([self.schema.field(name) for name in columns]).empty_table()
        return pa.Table.from_batches(batches).slice(0, k)

    def shard(self, rank: int, world: int, chunk_size: int, columns: list[str]):
        metadata = self.file.metadata
        start, end = _contiguous_block(metadata.num_rows, rank, world)
        offsets = np.concatenate([[0], np.cumsum([metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])])
        groups = [i for i in range(metadata.num_row_groups) if offsets[i] < end and offsets[i + 1] > start]

        def read():
            if not groups:
                return
            position = int(offsets[groups[0]])
            file = pq.ParquetFile(self.path, pre_buffer=False)
            for batch in file.iter_batches(batch_size=chunk_size, row_groups=groups, columns=columns):
                first, last = max(position, start), min(position + batch.num_rows, end)
                if last > first:
                    table = pa.Table.from_batches([batch.slice(first - position, last - first)])
                    yield np.arange(first, last, dtype=np.int64), table
                position += batch.num_rows

        return read


class _DatasetSource:
    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        self.schema = dataset.features.arrow_schema

    def head(self, k: int, columns: list[str]) -> pa.Table:
        return self.dataset.select_columns(columns).with_format("arrow")[: min(k, len(self.dataset))]

    def shard(self, rank: int, world: int, chunk_size: int, columns: list[str]):
        start, _ = _contiguous_block(len(self.dataset), rank, world)
        part = self.dataset.select_columns(columns).shard(num_shards=world, index=rank, contiguous=True)

        def read():
            position = start
            for table in part.with_format("arrow").iter(batch_size=chunk_size):
                yield np.arange(position, position + table.num_rows, dtype=np.int64), table
                position += table.num_rows

        return read


class _IterableSource:
    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        if dataset.features is not None:
            self.schema = dataset.features.arrow_schema
        else:
            first = next(iter(dataset.with_format("arrow").iter(batch_size=1)), None)
            self.schema = first.schema if first is not None else pa.schema([])

    def head(self, k: int, columns: list[str]) -> pa.Table:
        tables, rows = [], 0
        for table in self.dataset.select_columns(columns).with_format("arrow").iter(batch_size=max(k, 1)):
            tables.append(table)
            rows += table.num_rows
            if rows >= k:
                break
        if not tables:
            return pa.schema([self.schema.field(name) for name in columns]).empty_table()
        return pa.concat_tables(tables).slice(0, k)

    def shard(self, rank: int, world: int, chunk_size: int, columns: list[str]):
        part = self.dataset.select_columns(columns)
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            part = split_dataset_by_node(part, rank=rank, world_size=world, strategy="examples")

        def read():
            position = 0  # the process's own row count; its rows are rank, rank + world, ...
            for table in part.with_format("arrow").iter(batch_size=chunk_size):
                local = np.arange(position, position + table.num_rows, dtype=np.int64)
                yield rank + world * local, table
                position += table.num_rows

        return read


def _open_source(dataset):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return _DatasetSource(dataset, "the dataset")
    if isinstance(dataset, datasets.IterableDataset):
        return _IterableSource(dataset, "the dataset")
    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise ValueError(f"Give one split of the DatasetDict (splits: {', '.join(dataset)}), not the dictionary.")
    if not isinstance(dataset, str | Path):
        raise TypeError(
            "`dataset` must be a datasets.Dataset, a datasets.IterableDataset, a .parquet file or a save_to_disk "
            f"directory, got {type(dataset).__name__}."
        )
    path = Path(dataset)
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    if path.is_dir():
        return _DatasetSource(load_saved_dataset(path), str(path))
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"Cannot read {path}: points mode reads .parquet files and save_to_disk directories.")
    return _ParquetSource(path)


# ---------------------------------------------------------------------------------------------------------------------
# Features: which columns, their widths, and their values as a float array, checked.
# ---------------------------------------------------------------------------------------------------------------------


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_number_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) and _is_number(
        kind.value_type
    )


class _Features:
    def __init__(self, names: list[str], schema: pa.Schema):
        self.names = names
        self.arrow_columns = names
        self.is_list = [_is_number_list(schema.field(name).type) for name in names]
        self.widths = [
            schema.field(name).type.list_size if pa.types.is_fixed_size_list(schema.field(name).type) else (None if lst else 1)
            for name, lst in zip(names, self.is_list)
        ]

    @property
    def dim(self) -> int:
        return sum(self.widths)

    def resolve_widths(self, head: pa.Table, source_name: str) -> None:
        """The width of a variable-length list column: the length of its first row's list."""
        for position, name in enumerate(self.names):
            if self.widths[position] is None:
                column = head.column(name)
                if column.null_count == len(column):
                    raise ValueError(f"Column {name!r} of {source_name} has missing values in its first rows.")
                first = next(cell for cell in column.to_pylist() if cell is not None)
                if len(first) == 0:
                    raise ValueError(f"Column {name!r} of {source_name} holds empty lists.")
                self.widths[position] = len(first)

    def values(self, table: pa.Table, indices: np.ndarray, source_name: str) -> np.ndarray:
        """The points of `table` as `(rows, dim)` float64, or a ValueError naming the first bad row's global index."""
        rows = table.num_rows
        span = f"rows {indices[0]}-{indices[-1]}" if rows else "no rows"
        blocks = []
        for name, is_list, width in zip(self.names, self.is_list, self.widths):
            column = table.column(name).combine_chunks() if isinstance(table.column(name), pa.ChunkedArray) else table.column(name)
            if column.null_count:
                bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(
                    f"Column {name!r} of {source_name} has a missing value in row {indices[bad]} (chunk of {span})."
                )
            if is_list:
                lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
                wrong = np.flatnonzero(lengths != width)
                if len(wrong):
                    raise ValueError(
                        f"Column {name!r} of {source_name} holds a list of length {lengths[wrong[0]]} in row "
                        f"{indices[wrong[0]]} (chunk of {span}); every row needs {width} entries."
                    )
                flat = pc.list_flatten(column)
                if flat.null_count:
                    bad = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // width
                    raise ValueError(
                        f"Column {name!r} of {source_name} has a missing entry in row {indices[bad]} (chunk of {span})."
                    )
                block = flat.to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(rows, width)
            else:
                block = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[:, None]
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise ValueError(
                    f"Column {name!r} of {source_name} has a NaN or infinite value in row {indices[bad]} (chunk of "
                    f"{span})."
                )
            blocks.append(block)
        values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        return values if values.flags.writeable else values.copy()  # zero-copy Arrow buffers are read-only


def _select_features(source, columns) -> _Features:
    schema = source.schema
    available = list(schema.names)
    if columns is None:
        names = [name for name in available if _is_number(schema.field(name).type)]
        if not names:
            lists = [name for name in available if _is_number_list(schema.field(name).type)]
            hint = f"; list-valued columns must be selected by name: {', '.join(lists)}" if lists else ""
            raise ValueError(f"{source.name} has no numeric columns (columns: {', '.join(available)}){hint}.")
    else:
        names = [columns] if isinstance(columns, str) else list(columns)
        if not names:
            raise ValueError("No columns selected.")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Column {duplicates[0]!r} is selected more than once.")
        for name in names:
            if name not in available:
                raise ValueError(f"{source.name} has no column {name!r}; available columns: {', '.join(available)}.")
            kind = schema.field(name).type
            if not (_is_number(kind) or _is_number_list(kind)):
                raise ValueError(
                    f"Column {name!r} of {source.name} is not numeric (type {kind}); points mode reads integer and "
                    "float columns and columns of equally long lists of numbers."
                )
    return _Features(names, schema)


__all__ = ["PointsResult", "SUPPORTED_VARIANTS", "cluster_points", "update_statistics"]
