"""Points mode: one clustering problem whose points are the rows of a dataset too large for one device.

`cluster_points` runs the model's iterations over a dataset read in chunks, on one process or on every process of an
Accelerate (`torch.distributed`) launch. Memory holds the parameters and one chunk of points (with what the model's
assignment of that chunk needs), never all points. One iteration is the model's iteration as sufficient statistics
(`KMeansTransformerModel.statistics`, `finalize`; see docs/architecture.md), written nowhere else:

1. every process reads its shard chunk by chunk and adds up the update's sufficient statistics of each chunk
   assigned to the current parameters (`model.statistics(chunk, parameters)`, `(1, k, width)`, in float64: the
   labels and per-label sums of a hard assignment, the layer's weighted pass otherwise; for a variant that trims,
   `model.accumulate` of the labels after the trim; for `"sparse"`, the members weighted by the thresholds that
   `_sharded_sparsemax` finds);
2. one all-reduce of these `k * width` numbers sums them over the processes;
3. every process sets `parameters = model.finalize(statistics, parameters)`: the update block and the variant's
   centroid blocks (spherical normalisation, gmm's M-step), with their rules for empty clusters.

Points mode runs the variants whose update is a function of sums over the points (`VariantSpec.sums_over_points`),
and those that trim by a quantile of all points first (`VariantSpec.trims_by_quantile`: the trim gate's quantile is
found exactly across chunks and processes, `_sharded_trim`, then a second pass sums the points kept), and the
sparsemax update (`VariantSpec.thresholds_by_sparsemax`: each cluster's threshold is found exactly across chunks and
processes, `_sharded_sparsemax`, then a second pass sums the members weighted by it), together
`variants_with("points_mode")`; it refuses the others (k-medoids, whose medoid is chosen by the distances between all
pairs of members; the trainable layer). The trim and the thresholds are found on the bit patterns of `n` numbers
kept from one pass (a point's label, distance or score, and any weight; never `n x d`): the trim by radix selection,
8 bits a level, the thresholds by bisection, one small all-reduce per level or round. Data outside the model's safe range (where squared distances would overflow or underflow) is
divided by the power of two that `forward` would take for all the points at once (`_rescaling_exponent`, from the
largest `|coordinate|` that the reading pass finds across processes): every pass sees the divided points (exact),
and the parameters, state and inertia are scaled back at the end, as `forward` does; a variant whose result depends
on the data's scale (soft, sparse) refuses such data before the first pass. A variant's carried state (gmm's variances and weights) travels with the centroids in
`parameters` and is returned in `PointsResult.state`. Precision: the parameters are held in float64 from one
iteration to the next; the model assigns in its own dtype (points and parameters cast to it), and the statistics are
float64 sums: for a hard assignment and for sparse, of the points as read (in a float32 model whose scores are
expanded products, lloyd, trimmed and sparse, labels, trims and sums are taken on the points translated to the mean of
the centroids, the sums translated back in float64: `CompactFrame`); for a weighted one (soft, gmm, fuzzy), of
the points in the model's dtype, as one forward pass sums them (`cpu_kernels.membership_sums`: float64 products for
float64 points; float32 sums each lane of 16 rows in float32, then in float64, within a few float32 ulps of `Σ_i
|w_ij s_i x_i|`, except a gmm pass whose variances could cancel that error beyond `LANE_SUMS_TOLERANCE`, which
takes float64 products; a float32 pass runs on the points translated to the mean of the centroids, its sums
translated back in float64: `CompactFrame`; each chunk's pass decides for its own sums, and where every chunk's
variances pass, those of their sum do). Sums are taken in another order than in one forward
pass, so results agree with it to rounding, not bit for bit (within 1e-12 in float64; a hard assignment itself, lowest index on ties,
is the model's; on integer-valued data every sum is exact and `"lloyd"` gives the forward pass's centroids bit for
bit).

Speed. A chunk costs what it costs the in-memory compact engine. For `"lloyd"`, `"spherical"` and `"trimmed"`: the
nearest-centroid kernel (labels, no `(chunk, k)` scores) and the per-label sums (`cpu_kernels.segment_sums`), the
same `assign_labels`, `accumulate` and `finalize` as `KMeansTransformerLayer.compact_forward`; for `"lloyd"` without
weights, both in one compiled loop (`model.statistics`' `_fused_lloyd_statistics`:
`cpu_kernels.lloyd_step`, the same numbers); `"spherical"`'s points are unit-normalised once, as they are read
(`_seen_values`: the scratch file holds them so, and the model is told, `points_seen`). The model looks at its weights once per iteration (`KMeansTransformerModel._weights_held`), not per chunk. For `"soft"`,
`"gmm"` and `"fuzzy"`: the layer's weighted pass (`KMeansTransformerModel._weights_pass`), one compiled loop over
the chunk that turns each tile's scores into weights and adds them into the float64 sums at once, with no `(chunk,
k)` weights; the final pass takes the labels from the assignment head's pass the same way. Where the compiled loops
do not run (CUDA, no C++ compiler) that pass holds `score_chunk_size` weights at a time; the token engine (edited
weights, hooks) takes the chunk's whole `(chunk, k)` assignment from `model.assign` instead. For `"sparse"`: the labels from the nearest-centroid kernel and the
in-memory update's scores (`cpu_kernels.member_scores`) in a first pass, the bisection's rounds over the members
still inside each bracket (`cpu_kernels.sparsemax_round`), the sums from the thresholds in a second pass
(`cpu_kernels.thresholded_sums`): about 1.4-1.9x the in-memory time per iteration at 500,000 x 32, k = 64, one
thread (the second pass and the per-chunk copies; see docs/performance.md). Columns of float32 or
float64 are copied once into a `(chunk, d)` array of the wider of their type and the model's (no float64 copy of
float32 data for a float32 model), and the next chunk is read by a thread while the current one is assigned
(`_read_ahead`), so memory holds two chunks. See `benchmarks/points_speed.py` and docs/points_memory.md.

Scratch file (`cache="disk"`, the default). Decoding Parquet costs more than the kernels (2,000,000 x 32 float32
points, k = 256: about 1.8 s of decoding against 0.85 s of assignment per iteration), so the first pass writes each
chunk as the model is given it (its global row indices, its points in the dtype above, its weights) to a private file,
`chunks.bin` in a new temporary directory (`tempfile.TemporaryDirectory` in `cache_directory`, default the system's
temporary directory: never next to the user's data or outputs), and every later pass reads the chunks back with
`os.preadv` into fresh arrays instead of decoding again. The directory is removed when `cluster_points` returns or
raises, on an interrupt too (a killed process leaves it, as any temporary file). The file is read, not memory-mapped:
the page cache keeps it in memory when there is room, without counting in the process's resident memory, which stays
that of two chunks whatever the size of the data. Each process writes only its own rows: `rows * (d * itemsize + 8)`
bytes of disk (8 more per row with weights). `cache="none"` decodes the dataset on every pass (no disk used). With
`num_iterations=0` there is one pass, and nothing is written.

Reading. The dataset is a `datasets.Dataset`, a `datasets.IterableDataset` (streaming), a `.parquet` file (read with
`pyarrow.parquet.ParquetFile.iter_batches`) or a directory written by `Dataset.save_to_disk`. Process `rank` of `world`
reads a contiguous block of rows (the rows `Dataset.shard(world, rank, contiguous=True)` keeps; for a Parquet file
only the row groups that overlap its block), or, for an `IterableDataset`, every `world`-th row starting at `rank`
(`split_dataset_by_node(..., strategy="examples")`, which knows each row's global index; every process then streams
the whole dataset and skips the others' rows). A Parquet row group is decoded as a whole: memory also holds one row
group of the selected columns (pre-buffering is turned off: it would read the whole block ahead). The feature columns
are chosen and read by `tabular.FeatureColumns`, the reader of the `cluster` command's tables.

Validation. Before the first model call, a reading pass over the shard checks every row (nulls, NaN and infinite
values, lists of the wrong length, and for a `unit_norm` variant points of norm 0) and counts the rows; the processes
agree on the outcome with one small all-reduce, so that all of them raise together. Reading costs far less than a
model pass (see `docs/points_memory.md`), and a bad row is then reported before any work, naming its global row index
and the row range of its chunk.

Outputs. A labels directory, and the command's whole output directory (`write_points_output`: `centroids.parquet`,
`labels/`, then `summary.json`, the marker written last), are built under a temporary name that process 0 creates and
broadcasts, and take their place only when every process has written its part (`shared_output_directory`); readers
(`check_points_output`, `load_points_output`) refuse an output without its marker. Every collective that fails (a
process failed, was stopped or killed, or the process group's timeout passed) is a one-line `ProcessGroupError`.
"""

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import cpu_kernels
from .files import replacing_directory, replacing_file
from .attention import times_power_of_two
from .modeling_kmeans_transformer import KMeansTransformerOutput, _divided_by_power_of_two, labelled_inertia
from .tabular import (
    FeatureColumns,
    check_output_directory,
    is_number_type,
    load_saved_dataset,
    refuse_dataset_dict,
    refuse_partial,
    require_columns,
)
from .variants import variants_with


@dataclass
class PointsResult:
    """
    The outcome of `cluster_points`.

    centroids: `(k, d)` float64, the centroids after the last iteration (unit vectors for a `unit_norm` variant).
    inertia: the sum over all labelled points of the squared distance to the centroid of their label, under the
        returned parameters, on the points as the model sees them (unit-normalised for `"spherical"`), as the model's
        `inertia`.
    cluster_sizes: `(k,)` the number of points labelled with each cluster under the returned parameters.
    num_iterations: the number of iterations run.
    num_points: the number of points (rows) in the dataset.
    state: the variant's carried state after the last iteration, by name (`VariantSpec.state_names`), each `(k,)`
        float64: gmm's `variances` and `weights`; empty for the variants that carry none.
    """

    centroids: np.ndarray
    inertia: float
    cluster_sizes: np.ndarray
    num_iterations: int
    num_points: int
    state: dict[str, np.ndarray] = field(default_factory=dict)


def cluster_points(
    model,
    dataset,
    *,
    columns=None,
    chunk_size: int = 65536,
    num_iterations: int | None = None,
    initial_state: dict | None = None,
    accelerator=None,
    progress: bool = True,
    labels_output=None,
    overwrite: bool = False,
    weight_column: str | None = None,
    cache: str = "disk",
    cache_directory=None,
) -> PointsResult:
    """
    Cluster the rows of `dataset` as one problem with `model`, reading `chunk_size` rows at a time (see the module
    docstring for the iteration and the reading).

    Args:
        model: a `KMeansTransformerModel` of a variant of `variants_with("points_mode")` (`"lloyd"`, `"soft"`,
            `"spherical"`, `"trimmed"`, `"sparse"`, `"gmm"`, `"fuzzy"`) with `share_layers=True`.
        dataset: a `datasets.Dataset`, a `datasets.IterableDataset`, a `.parquet` file or a `save_to_disk` directory.
        columns: the feature columns, in order; a column of equally long lists of numbers (an embedding) gives one
            coordinate per entry. Default: every numeric (integer or float, not boolean) column, in table order.
        chunk_size: rows per model call. On the compact engine a call holds about `chunk_size * (d + 2)` numbers
            (the chunk's compact tokens; no `(chunk_size, k)` weights where the compiled loops run); on the token
            engine `chunk_size * (2d + k + 1)` numbers per token tensor, several at once. The next chunk is read
            meanwhile, so two chunks of points are held.
        num_iterations: the number of iterations, default `model.config.num_iterations`.
        initial_state: the variant's carried state to start from, by name (gmm: `{"variances": (k,), "weights":
            (k,)}`), as `forward` takes it. A state not given is the model's stored fitted one
            (`config.fitted_centroids`); there is no other default, since the model's defaults (gmm's variances: the
            variance of all points) are computed over all points at once.
        accelerator: an `accelerate.Accelerator`; without one, `accelerate.PartialState()` (one process unless the
            script was launched on several).
        progress: show a progress bar over the iterations (main process only).
        labels_output: a directory (on storage every process sees); if given, every process writes the labels of
            its rows under the final parameters, with their global row index, to
            `labels_output/part-{rank:05d}-of-{world:05d}.parquet` (columns `index` and `label`). The directory is
            built whole under a temporary name (`shared_output_directory`): it appears complete or not at all.
        overwrite: replace an existing `labels_output` (checked before any work), whole, once the new one is complete.
        weight_column: a numeric column of non-negative sample weights (not a feature; checked with the rows): each
            point enters the statistics with its weight (`model.accumulate(..., sample_weight=...)`) and the inertia
            is weighted; `cluster_sizes` still count the points.
        cache: `"disk"` (default): the first pass writes each chunk as decoded (points in the dtype the model is
            given, global row indices, weights) to a private scratch file, and every later pass reads the file back
            instead of decoding the dataset again (see "Scratch file" in the module docstring); `"none"`: decode the
            dataset on every pass.
        cache_directory: where the scratch file's temporary directory is made; default the system's temporary
            directory (`tempfile.gettempdir()`, `TMPDIR`). It must hold each process's shard: `rows * (d * itemsize
            + 8)` bytes, `+ 8` per row more with `weight_column`.

    Returns:
        A `PointsResult`, identical on every process.

    Initial centroids: the model's stored fitted centroids if `config.fitted_centroids`, else the first `k` rows of
    the whole dataset (the model's default for one problem), read by every process alike.
    """
    num_iterations = _check_arguments(model.config, chunk_size, num_iterations, initial_state, labels_output, overwrite,
                                      cache)
    processes = Processes.of(accelerator)
    device, spec = model.device, model.config.variant_spec
    with torch.no_grad():  # points mode records no gradient
        compact = model.engine() == "compact" and model._compact_by_labels()
    if not spec.sums_over_points and not compact:  # a trim or sparsemax thresholds, found on the labels
        raise ValueError(
            f"Points mode runs {model.config.variant!r} on the compact engine's labels, which this model does not "
            "run (model.engine() is 'tokens': edited or trained weights, a hook, or fast_hardmax=False)."
        )
    source = _open_source(dataset)
    features = _select_features(source, columns, weight_column)
    head = _read_head(source, features, model.config)
    read = features.names + ([] if weight_column is None else [weight_column])
    shard = source.shard(processes.rank, processes.world, chunk_size, read)
    shard_size, num_points, magnitude = _validate_shard(shard, features, source.name, device, processes, spec,
                                                        weight_column)
    parameters = _initial_parameters(model, head, initial_state)
    exponent = _rescaling_exponent(model, parameters, magnitude, num_points)
    if exponent is not None:  # every pass sees the data divided by 2**exponent
        parameters = _divided_parameters(model, parameters, exponent)

    def decoded() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        for indices, table in shard():
            weights = None if weight_column is None else _weights(table, weight_column)
            values = _checked_values(features, table, indices, model.dtype)
            yield indices, _seen_values(spec, values, model.dtype), weights

    from tqdm.auto import tqdm

    quiet = not (progress and processes.is_main) or num_iterations == 0  # no bar for no work
    bar = tqdm(range(num_iterations), desc="points mode", unit="iteration", disable=quiet)
    scratch = _ScratchFile(cache_directory) if cache == "disk" and num_iterations > 0 else None
    with torch.no_grad(), scratch or nullcontext():

        def chunks() -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
            items = decoded() if scratch is None else scratch.chunks(decoded)
            for indices, values, weights in _read_ahead(items):
                weights = None if weights is None else torch.from_numpy(weights).to(device)
                points = torch.from_numpy(values).to(device)
                yield indices, points if exponent is None else times_power_of_two(points, -exponent), weights

        for _ in bar:  # the weights are looked at once per iteration, not once per chunk (`_weights_held`)
            with model._weights_held():
                parameters = _iteration(model, chunks, parameters, processes.reduce_sum, shard_size)
        with model._weights_held():
            totals = _final_pass(model, chunks, parameters, processes, labels_output, overwrite, shard_size)

    k = model.config.num_clusters
    if exponent is not None:
        parameters, totals[k] = _scaled_back(model, parameters, totals[k], exponent)
    return PointsResult(
        centroids=parameters["centroids"][0].detach().cpu().numpy(),
        inertia=float(totals[k]),
        cluster_sizes=totals[:k].cpu().numpy().round().astype(np.int64),
        num_iterations=num_iterations,
        num_points=num_points,
        state={name: parameters[name][0].detach().cpu().numpy() for name in spec.state_names},
    )


CACHES = ("disk", "none")


def _check_arguments(config, chunk_size, num_iterations, initial_state, labels_output, overwrite, cache) -> int:
    """Check the arguments that need no data (and where the labels go); return the number of iterations."""
    if labels_output is not None:
        check_output_directory(labels_output, overwrite, _is_labels_directory, "a directory of label parts",
                               how="pass overwrite=True")
    supported = variants_with("points_mode")
    spec = config.variant_spec
    if not spec.points_mode:
        raise ValueError(
            f"Points mode supports the variants {', '.join(supported)}, whose update is a function of sums over the "
            f"points (after a trim by a quantile of all points, or with a sparsemax threshold per cluster); variant "
            f"{config.variant!r} is not one of them (its update needs all points at once)."
        )
    if not config.share_layers:
        raise ValueError("Points mode loops the model's assignment one iteration at a time: it needs share_layers=True.")
    if cache not in CACHES:
        raise ValueError(f"`cache` must be one of {', '.join(map(repr, CACHES))}, got {cache!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}.")
    given = {name for name, value in (initial_state or {}).items() if value is not None}
    unknown = sorted(given - set(spec.state_names))
    if unknown:
        carried = ", ".join(spec.state_names) or "nothing"
        raise ValueError(f"`initial_state` has {unknown[0]!r}, but variant {config.variant!r} carries {carried}.")
    missing = [name for name in spec.state_names if name not in given]
    if missing and not config.fitted_centroids:
        raise ValueError(
            f"Variant {config.variant!r} carries {', '.join(spec.state_names)} from call to call, and points mode "
            f"cannot compute the model's default {missing[0]!r} (it needs all points at once): give `initial_state` "
            "or use a model with stored fitted parameters (fitted_centroids=True)."
        )
    if num_iterations is None:
        num_iterations = config.num_iterations
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"`num_iterations` must be an integer >= 0, got {num_iterations!r}.")
    return num_iterations


class ProcessGroupError(RuntimeError):
    """
    A collective operation with the other processes failed: one of them failed, was stopped or killed, or did not
    answer within the process group's timeout (`InitProcessGroupKwargs(timeout=...)`, the command's `--timeout`).
    """


@dataclass
class Processes:
    """This process's place in the launch, and the operations over all processes (each a no-op for one process)."""

    rank: int
    world: int
    is_main: bool
    device: torch.device

    @classmethod
    def of(cls, accelerator) -> "Processes":
        if accelerator is None:
            from accelerate import PartialState

            state = PartialState()
        else:
            state = accelerator.state
        return cls(state.process_index, state.num_processes, state.is_main_process, state.device)

    def collective(self, operation, *args, **kwargs):
        """`operation(*args, **kwargs)`, a collective: its failure is a one-line `ProcessGroupError`."""
        try:
            return operation(*args, **kwargs)
        except RuntimeError as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ProcessGroupError(
                f"process {self.rank} of {self.world}: communication with the other processes failed (one of them "
                f"failed, was stopped or killed, or did not answer within the timeout): {reason}"
            ) from error

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        from accelerate.utils import reduce

        return self.collective(reduce, tensor, reduction="sum")

    def reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise largest of `tensor` over the processes."""
        if self.world == 1:
            return tensor
        import torch.distributed as distributed

        tensor = tensor.clone()
        self.collective(distributed.all_reduce, tensor, op=distributed.ReduceOp.MAX)
        return tensor

    def broadcast(self, objects: list) -> list:
        """Process 0's `objects` (a list of picklable objects), on every process."""
        if self.world == 1:
            return objects
        from accelerate.utils import broadcast_object_list

        return self.collective(broadcast_object_list, objects, from_process=0)

    def agree(self, problem: Exception | None, elsewhere: Exception) -> None:
        """
        Every process learns whether one of them has a `problem` (one small all-reduce, which is also a barrier):
        this process raises its own, the others raise `elsewhere`.
        """
        flag = torch.tensor([0.0 if problem is None else 1.0], dtype=torch.float64, device=self.device)
        failed = float(self.reduce_sum(flag)[0]) > 0
        if problem is not None:
            raise problem
        if failed:
            raise elsewhere


@contextmanager
def shared_output_directory(path, overwrite: bool = False, accelerator=None) -> Iterator[Path]:
    """
    `files.replacing_directory` for every process of a launch: yield a temporary directory next to `path` that every
    process writes into; when every process has left the block without error, it takes `path`'s place (a previous
    output, allowed with `overwrite`, is removed only then), and the processes leave together. Process 0 creates it
    (`.NAME.<pid>-<random>.partial`) and the others learn its name through a broadcast (accelerate's
    `broadcast_object_list`); it must lie on storage that every process sees (checked). On an error or an interrupt
    in process 0 the temporary directory is removed; a killed run leaves it, hidden, and it is never read.
    """
    with _shared_directory(Path(path), overwrite, Processes.of(accelerator)) as directory:
        yield directory


@contextmanager
def _shared_directory(path: Path, overwrite: bool, processes: Processes) -> Iterator[Path]:
    with ExitStack() as stack:
        temporary = _create_shared_directory(stack, path, overwrite, processes)
        yield temporary
        processes.agree(None, OSError("another process failed."))  # a barrier: every process has written its files
        problem = None
        if processes.is_main:
            try:
                stack.close()  # the rename into place
            except OSError as error:
                problem = error
        processes.agree(problem, OSError(f"process 0 could not move {temporary} into place at {path} (see its error)."))


def _create_shared_directory(stack: ExitStack, path: Path, overwrite: bool, processes: Processes) -> Path:
    """Process 0 enters `replacing_directory(path)` on `stack`; every process gets the temporary directory's path."""
    name, problem = None, None
    if processes.is_main:
        try:
            name = str(stack.enter_context(replacing_directory(path, overwrite, how="pass overwrite=True")))
        except OSError as error:
            problem = error
    name, message = processes.broadcast([name, None if problem is None else " ".join(str(problem).split())])
    if problem is not None:
        raise problem
    if message is not None:
        raise OSError(f"process 0 could not create the output {path}: {message}")
    temporary = Path(name)
    unseen = f"{temporary}, created by process 0, is not visible to process {processes.rank}"
    hidden = None if temporary.is_dir() else OSError(f"{unseen}: the output must lie on storage every process sees.")
    processes.agree(hidden, OSError(f"{temporary} is not visible to every process: the output must lie on storage "
                                    "every process sees."))
    return temporary


def _is_labels_directory(path: Path) -> bool:
    """Whether the directory `path` holds only label parts (`part-*.parquet`), as `cluster_points` writes them."""
    return all(entry.name.startswith("part-") and entry.suffix == ".parquet" for entry in path.iterdir())


def _read_head(source, features, config) -> np.ndarray:
    """The first `k` rows of the whole dataset, `(k, d)` float64, after the dimension and size checks."""
    k, d = config.num_clusters, config.point_dim
    head = source.head(k, features.names)
    if head.num_rows == 0:
        raise ValueError(f"{source.name} has no rows.")
    features.resolve_widths(head)
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
    return features.values(head, np.arange(head.num_rows))


def _rescaling_exponent(model, parameters, magnitude: float, num_points: int) -> torch.LongTensor | None:
    """
    The exponent `e` `(1,)` by which points mode divides the whole dataset (`2**-e`, exact) when its largest
    `|coordinate|` (`magnitude`, over every process's rows) or the starting centroids lie outside the model's safe
    range, as `forward` would for the same points in one call (`model._rescaling_exponents`, which refuses a
    variant whose result depends on the data's scale); None inside the range, where the data is used as read.
    """
    dtype = model.dtype
    centroids = model.config.variant_spec.seen_points(parameters["centroids"].to(dtype))
    largest = torch.tensor([magnitude], dtype=torch.float64).to(dtype)  # rounding is monotone: the largest rounded
    empty = centroids.new_empty(1, 0, model.config.point_dim)
    return model._rescaling_exponents(empty, centroids, largest.to(centroids.device), num_points=num_points)


def _divided_parameters(model, parameters: dict[str, torch.Tensor], exponent) -> dict[str, torch.Tensor]:
    """The parameters of the data divided by `2**exponent`: the centroids, and each carried state by its power."""
    (centroids,) = _divided_by_power_of_two(exponent, parameters["centroids"])
    state = {name: value for name, value in parameters.items() if name != "centroids"}
    return {"centroids": centroids, **model._divided_state(state, exponent)}


def _scaled_back(model, parameters: dict[str, torch.Tensor], inertia: torch.Tensor, exponent):
    """The parameters and inertia of the divided data in the data's units (`model._scale_back`)."""
    outputs = KMeansTransformerOutput(centroids=parameters["centroids"], inertia=inertia[None], **{
        name: value for name, value in parameters.items() if name != "centroids"
    })
    model._scale_back(outputs, exponent)
    names = ["centroids", *model.config.variant_spec.state_names]
    return {name: outputs[name] for name in names}, outputs.inertia[0]


def _initial_parameters(model, head: np.ndarray, initial_state) -> dict[str, torch.Tensor]:
    """
    The model's checked starting parameters (`model.initial_parameters`: the stored fitted ones, else the first `k`
    rows; the given state, else the fitted one), held in float64 for the updates.
    """
    points = torch.from_numpy(head).to(device=model.device, dtype=model.dtype)
    parameters = model.initial_parameters(points, **(initial_state or {}))
    return {name: value.to(torch.float64) for name, value in parameters.items()}


def _iteration(model, chunks, parameters: dict[str, torch.Tensor], reduce_sum, shard_size: int
               ) -> dict[str, torch.Tensor]:
    """
    One iteration over the shard (`shard_size` points): each chunk's statistics (`_statistics`: `model.statistics`,
    or for a variant that trims by a quantile of all points the sums of its labels after the trim, `_labelled`; for
    a sparsemax update, `_sharded_sparsemax`) added up, summed over the processes, and the new parameters
    (`model.finalize`), in float64.
    """
    if model.config.variant_spec.thresholds_by_sparsemax:
        statistics = _sharded_sparsemax(model, chunks, parameters, reduce_sum, shard_size)
        return model.finalize(reduce_sum(statistics), parameters)
    if model.config.variant_spec.trims_by_quantile:
        parts = (
            _statistics(model, points, parameters, weights, labels)
            for _, points, weights, labels in _labelled(model, chunks, parameters, reduce_sum, shard_size)
        )
    else:
        parts = (_statistics(model, points, parameters, weights) for _, points, weights in chunks())
    statistics = None
    for chunk_statistics in parts:
        statistics = chunk_statistics if statistics is None else statistics + chunk_statistics
    if statistics is None:  # an empty shard (fewer rows than processes) adds zeros of the right shape
        statistics = _statistics(model, parameters["centroids"].new_zeros(0, model.config.point_dim), parameters)
    return model.finalize(reduce_sum(statistics), parameters)


def _labelled(model, chunks, parameters, reduce_sum, shard_size: int) -> Iterator[tuple]:
    """
    Each chunk of `chunks()` with its labels `(1, n)` (`_labels`): `(indices, points, weights, labels)`. For a
    variant that trims by a quantile of all points (`VariantSpec.trims_by_quantile`), a first pass labels the shard's
    `shard_size` points and finds the trimmed points across processes (`_sharded_trim`), and a second pass yields
    the chunks again with the trimmed points' labels set to -1.
    """
    if not model.config.variant_spec.trims_by_quantile:
        for indices, points, weights in chunks():
            yield indices, points, weights, _labels(model, points, parameters)
        return
    labels = _sharded_trim(model, chunks, parameters, reduce_sum, shard_size)
    start = 0
    for indices, points, weights in chunks():
        yield indices, points, weights, labels[None, start : start + len(indices)].long()
        start += len(indices)


def _sharded_trim(model, chunks, parameters: dict[str, torch.Tensor], reduce_sum, shard_size: int) -> torch.Tensor:
    """
    The labels `(n,)` of the shard's `n = shard_size` points after the trim gate (-1: trimmed; int32 for k <= 2^31),
    as the gate finds them on all points of all processes at once (`KMeansTransformerTrimGate.compact_labels`,
    weighted or not). One pass over the chunks writes each point's label (the assign block's: every point has one),
    its distance `δ_i` to its centroid (`gate.distances`, in the model's dtype) and, with a weight column, its weight
    (float64) into arrays of `n` made once; the order statistics the gate needs are then found exactly by radix
    selection (`_smallest_keys`) on the distances' bit patterns (no copy: int32 for float32), which order
    non-negative floats as their values: 4 levels (float32; 8 for float64) of one all-reduced histogram of `2k × 256`
    (or 256) sums, the first over all `n` points, the others over the points still in the bins chosen:

    - `trim_quantile` q: per cluster, `v(p)` = the smallest distance whose summed weight of members at or below it
      exceeds `p`, at `p = floor(h)` and `min(floor(h) + 1, W_j - 1)`, `h = q (W_j - 1)`, `W_j` the cluster's total
      weight (its count without weights); `τ_j` interpolates them (`gate.interpolated`); trimmed: `δ_i > τ_a(i)`.
    - `trim_fraction` α: point `i` is trimmed when the weight of the points before it, farthest first (the higher
      global row index first among equal distances), with its own, is at most `floor(α W)`: the points beyond the
      smallest distance `v*` with at most `floor(α W)` of weight beyond it, and among those at `v*` the ones from
      the smallest row index `r` with the weight beyond `v*` and at `v*` from row `r` on within `floor(α W)` (8
      more levels, over the points at `v*` only, whose row indices `_RowIndices` gives).

    Weights are summed in another order than the gate's cumulative sums: with integer weights (or none: counts)
    every sum is exact and the trim is the gate's exactly.
    """
    config, dtype, k = model.config, model.dtype, model.config.num_clusters
    (gate,) = model.assignment_head.point_blocks.values()  # the trim gate (`VariantSpec.trims_by_quantile`)
    centroids = parameters["centroids"].to(dtype)
    device = centroids.device
    labels = torch.empty(shard_size, dtype=_narrowest_index(k), device=device)
    distance = torch.empty(shard_size, dtype=dtype, device=device)
    weight, rows, start = None, _RowIndices() if config.trim_quantile is None else None, 0
    for index, points, chunk_weight in chunks():
        end = start + len(index)
        # labels and distances in the model's `CompactFrame` (translation-invariant; `_framed`)
        tokens, framed, _ = model._framed(points.to(dtype)[None], centroids)
        chunk_labels = model.assignment_head.assign.assign_labels(tokens, framed, None)
        labels[start:end] = chunk_labels[0]
        distance[start:end] = gate.distances(tokens, framed, chunk_labels)[0]
        if chunk_weight is not None:  # `w_i >= 0` (checked): the gate's `w_i [w_i > 0]`
            if weight is None:
                weight = torch.empty(shard_size, dtype=torch.float64, device=device)
            weight[start:end] = chunk_weight
        if rows is not None:
            rows.append(index)
        start = end
    if start != shard_size:
        raise RuntimeError(f"The shard gave {start} rows on this pass, {shard_size} when checked.")
    bits = _BITS[distance.element_size()]
    keys = distance.view(bits)  # δ >= 0: the bit patterns are in the order of the values
    infinity = int(torch.tensor(float("inf"), dtype=dtype).view(bits))
    if config.trim_quantile is not None:
        counts = torch.bincount(labels, weight, minlength=k)
        totals = reduce_sum(counts.to(torch.float64))  # float64 if empty too
        position = config.trim_quantile * (totals - 1).clamp(min=0)
        below = position.floor()
        ranks = torch.stack([below, torch.minimum(below + 1, (totals - 1).clamp(min=0))])
        values = _smallest_keys(keys, labels, weight, (2, k), infinity, lambda sums: sums > ranks, reduce_sum)
        low, high = values.to(bits).view(dtype)
        trimmed = distance > gate.interpolated(low, high, (position - below).to(dtype))[labels]
        if weight is not None:
            trimmed &= weight > 0
        return labels.masked_fill_(trimmed, -1)
    total = reduce_sum(_weight_sum(weight, shard_size, device))
    budget = torch.floor(config.trim_fraction * total)
    (cut,) = _smallest_keys(keys, _one_group(shard_size, device), weight, (1, 1), infinity,
                            lambda sums: total - sums <= budget, reduce_sum)[0]
    at_most = keys <= cut
    beyond = total - reduce_sum(_weight_sum(None if weight is None else weight * at_most, at_most.sum(), device))
    farther = ~at_most if weight is None else ~at_most & (weight > 0)
    del at_most
    tied = torch.nonzero((keys == cut) if weight is None else (keys == cut) & (weight > 0))[:, 0]
    tied_weight = None if weight is None else weight[tied]
    tied_total = reduce_sum(_weight_sum(tied_weight, len(tied), device))
    tied_rows = rows.at(tied)
    # the first trimmed row among the points at `cut` (keys `row + 1`: `S(r)` is the tied weight before row `r`)
    (first,) = _smallest_keys(tied_rows + 1, _one_group(len(tied), device), tied_weight, (1, 1), 2**62,
                              lambda sums: beyond + tied_total - sums <= budget, reduce_sum)[0]
    labels.masked_fill_(farther, -1)
    labels[tied[tied_rows >= first]] = -1
    return labels


def _narrowest_index(upper: int) -> torch.dtype:
    """int32 where it holds `-1` to `upper - 1` (labels of `upper` clusters, slots of `upper` bins), else int64."""
    return torch.int32 if upper - 1 <= torch.iinfo(torch.int32).max else torch.int64


def _one_group(size: int, device) -> torch.Tensor:
    """The group 0 of `size` points, as `_smallest_keys` takes groups (no memory: one value, expanded)."""
    return torch.zeros(1, dtype=torch.int32, device=device).expand(size)


def _weight_sum(weight: torch.Tensor | None, count, device) -> torch.Tensor:
    """`Σ_i w_i` `(1,)` float64 over `weight`, or `count` where there are none (each point 1: exact)."""
    if weight is None:
        return torch.as_tensor(count, dtype=torch.float64, device=device).reshape(1)
    return weight.sum()[None]


class _RowIndices:
    """
    The global row indices of a shard's points in point order, chunk by chunk, kept without an array of `n`: a
    chunk's as `first + step * offset` where they are a progression (every source's chunks are), else as given.
    """

    def __init__(self):
        self.starts, self.chunks = [0], []

    def append(self, indices: np.ndarray) -> None:
        step = int(indices[1] - indices[0]) if len(indices) > 1 else 1
        progression = len(indices) > 0 and np.array_equal(indices, indices[0] + step * np.arange(len(indices)))
        self.chunks.append((int(indices[0]), step) if progression else indices.copy())
        self.starts.append(self.starts[-1] + len(indices))

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """The row indices (int64) of the points at `positions` in point order."""
        wanted = positions.cpu().numpy()
        rows = np.empty(len(wanted), dtype=np.int64)
        chunk_of = np.searchsorted(self.starts, wanted, side="right") - 1
        for chunk in np.unique(chunk_of):
            mine = chunk_of == chunk
            offsets, indices = wanted[mine] - self.starts[chunk], self.chunks[chunk]
            rows[mine] = indices[offsets] if isinstance(indices, np.ndarray) else indices[0] + indices[1] * offsets
        return torch.from_numpy(rows).to(positions.device)


def _smallest_keys(keys, groups, weights, shape, upper: int, enough, reduce_sum) -> torch.Tensor:
    """
    For each target `t` and group `g` (`shape`: targets, groups), the smallest integer `v` in `[0, upper]` with
    `enough(S(v))[t, g]`, where `S(v)[t, g]` is the summed `weights` (>= 0; None: 1 each) of the points of group `g`
    (`groups`, all processes) whose `keys` are at most `v`; `upper` where there is none. `enough` takes sums of shape
    `(..., targets, groups)`, elementwise, and must be monotone in `v`. The `keys` are non-negative integers (int32
    or int64) of at most `B` bits, `B` the bit length of `upper` (the bit patterns of non-negative floats, NaN
    included, with `upper` that of infinity).

    Radix selection, `b` = 8 bits at a time from the top (`ceil(B / b)` levels: 4 for float32 patterns, 8 for
    float64): after a level, `v` is known to lie in a range `[P 2^s, (P + 1) 2^s)` of each `(t, g)`, and `L[t, g]` =
    `S(P 2^s - 1)` is the weight below it. The next level splits the range into `2^b` bins by the next bits of the
    key: one weighted histogram `H` of the points inside (the candidates; every point at the first level), one
    all-reduce of it, and `S` at the end of bin `c` is `L + Σ_{c' <= c} H[c']`; `v` lies in the first bin where
    `enough` holds, which becomes the range, and the points outside it drop out. Targets whose ranges coincide share
    one histogram. After the last level the range is `v` itself; a group where `enough` never holds gets `upper`.
    Every process runs the same levels and all-reduces (an empty shard too); with integer weights (or dyadic
    fractions, or none) every sum is exact, so the result is that of sorting all points at once. A level holds one
    array of `n` slots (int32 where they fit) besides the candidates.
    """
    targets, num_groups = shape
    device = keys.device
    width = max(int(upper).bit_length(), 1)
    shifts = [max(width - 8 * level, 0) for level in range(1, (width + 7) // 8 + 1)]
    slot = _narrowest_index(targets * num_groups * 2 ** min(width, 8))  # the dtype of the histograms' slots
    groups_range = torch.arange(num_groups, device=device)
    target_ids = torch.arange(targets, dtype=slot, device=device)[:, None].expand(targets, num_groups)
    prefix = torch.zeros(shape, dtype=torch.int64, device=device)  # the range of each (t, g): `P`
    below = torch.zeros(shape, dtype=torch.float64, device=device)  # `L`
    shared = torch.zeros(shape, dtype=torch.int64, device=device)  # whose histogram each (t, g) reads
    owner, owners = None, 1  # the candidates' histogram (the first target whose range holds them): 0 at first
    previous = width
    for shift in shifts:
        bins = 1 << (previous - shift)
        slots = (keys >> shift).bitwise_and_(bins - 1).to(slot).add_(groups, alpha=bins)
        if owner is not None:
            slots.add_(owner, alpha=num_groups * bins)
        # (bincount gives int64 counts without weights, and int64 zeros of no points: every process sends float64)
        histogram = torch.bincount(slots, weights, minlength=owners * num_groups * bins).to(torch.float64)
        histogram = reduce_sum(histogram).view(owners, num_groups, bins)[shared, groups_range]
        cumulative = histogram.cumsum(-1)
        reached = enough((below[..., None] + cumulative).movedim(-1, 0)).movedim(0, -1)
        hit = reached.any(-1)
        if owner is None:  # the first level: whether `enough` holds at all, within the keys' range
            found = hit
        # the first bin where `enough` holds (the last one if rounding kept it from holding at this level's sums)
        chosen = torch.where(hit, reached.to(torch.int8).argmax(-1), bins - 1)
        below = below + (cumulative - histogram).gather(-1, chosen[..., None])[..., 0]
        prefix = prefix * bins + chosen
        previous = shift
        if shift == 0:
            break
        # each chosen bin's first target: the histogram of that range at the next level
        chosen_slots = (shared * num_groups + groups_range) * bins + chosen
        first = torch.full((owners * num_groups * bins,), targets, dtype=slot, device=device)
        first.scatter_reduce_(0, chosen_slots[found], target_ids[found], "amin")
        shared = first[chosen_slots].to(torch.int64).clamp(max=targets - 1)
        candidates = (first < targets)[slots]
        if weights is not None:
            candidates &= weights != 0
        keep = candidates.nonzero()[:, 0]
        del candidates
        keys, groups, owner = keys[keep], groups[keep], first[slots[keep]]
        weights = None if weights is None else weights[keep]
        owners = targets
    return torch.where(found, prefix.clamp(max=upper), upper)


def _sharded_sparsemax(model, chunks, parameters: dict[str, torch.Tensor], reduce_sum, shard_size: int
                       ) -> torch.Tensor:
    """
    The statistics `(1, k, d + 1)` of this shard for a sparsemax update (`VariantSpec.thresholds_by_sparsemax`), whose
    sum over the processes is the update's `compact_statistics` on all points at once. A first pass keeps each
    point's label (the assign block's), its score `s_i` for its cluster (`update.member_scores`, in the model's
    dtype: those of the in-memory update) and, with a weight column, its weight, in arrays of the shard's `n =
    shard_size` points made once. Per cluster `j`, with members `M_j`
    (labelled `j`, weight `w_i > 0`), the threshold `τ_j` solves `Σ_{M_j} w_i max(s_i - τ_j, 0) = 1`. Its support is
    the members with `G_j(u_i) < 1` (`_sparsemax_bounds`), where `u_i = -s_i` and `G_j(u) = Σ_{M_j} w_i max(u - u_i,
    0)`: the sorted rule `1 + W_r z_(r) > C_r` of `attention.sparsemax_projection` for each member; `G_j` is
    non-decreasing, so tied members are all in or all out. Then `τ_j = (Σ_support w_i s_i - 1) / Σ_support w_i` (one
    all-reduce of `2k` sums), and a second pass sums `[Σ_i w_i max(s_i - τ_a(i), 0) x_i ; mass_j]`
    (`update.thresholded_statistics`); a cluster without members has mass 0 and keeps its centroid (`finalize`). The
    sums are taken in another order than the projection's running sums, so `τ_j` agrees with it to rounding, and a
    member at the edge of the support, whose weight is 0 up to rounding there, may fall on either side. Scores and
    sums are those of the points and centroids in the model's `CompactFrame` (a float32 model far from the origin),
    the statistics translated back (`untranslated_statistics`).
    """
    dtype, k = model.dtype, model.config.num_clusters
    update = model.layers[0].update
    centroids = parameters["centroids"].to(dtype)
    device = centroids.device
    labels = torch.empty(shard_size, dtype=torch.long, device=device)  # arrays of the shard's size, made once
    score, weight, start = centroids.new_empty(shard_size), None, 0
    origin = model._labels_origin(centroids)  # scores and sums in the model's `CompactFrame` (`_framed`)
    framed = centroids if origin is None else centroids - origin

    def seen(points):  # a chunk's points in the frame, `x_i - o` rounded once (as `_framed`); as given without one
        points = points.to(dtype)[None]
        return points if origin is None else points - origin

    for _, points, chunk_weight in chunks():
        end = start + len(points)
        chunk_labels = _labels(model, points, parameters)
        labels[start:end] = chunk_labels[0]
        score[start:end] = update.member_scores(chunk_labels, seen(points), framed)[0]
        if chunk_weight is not None:
            if weight is None:
                weight = torch.empty(shard_size, dtype=torch.float64, device=device)
            weight[start:end] = chunk_weight
        start = end
    if start != shard_size:
        raise RuntimeError(f"The shard gave {start} rows on this pass, {shard_size} when checked.")
    members = _Members(score, labels, weight, k)
    cumulative, mass = reduce_sum(members.support_sums(_sparsemax_bounds(members, dtype, k, reduce_sum))).to(dtype)
    thresholds = ((cumulative - 1) / torch.where(mass > 0, mass, 1))[None]  # as the projection: (C_K - 1) / W_K
    statistics, start = torch.zeros(1, k, model.config.point_dim + 1, dtype=torch.float64, device=device), 0
    for _, points, chunk_weight in chunks():
        end = start + len(points)
        statistics += update.thresholded_statistics(
            labels[None, start:end], seen(points), score[None, start:end], thresholds,
            None if chunk_weight is None else chunk_weight[None],
        )
        start = end
    return statistics if origin is None else update.untranslated_statistics(statistics, origin)


def _sparsemax_bounds(members: "_Members", dtype: torch.dtype, k: int, reduce_sum) -> torch.Tensor:
    """
    Each cluster's bound `b_j` (float64 `(k,)`) of its sparsemax support over all processes: with `u_i = -s_i` and the
    members `M_j`, the support is the members with `G_j(u_i) < 1`, `G_j(u) = Σ_{M_j} w_i max(u - u_i, 0)`,
    non-decreasing: the members with `u_i < b_j`, `b_j` the smallest `u` of `dtype` with `G_j(u) >= 1`. It is found by
    bisection on the keys of `u` (`_ordered_keys`: the float bit patterns, in the order of the values), one all-reduce
    of `4k` sums per round: the bracket `(lo, hi]` holds the smallest key where `G >= 1`; the members at or below
    `lo` enter `G` at a candidate `v` as `G(lo) + W_lo (v - lo)` (`W_lo` their weight), so that a round adds up only
    the members inside the bracket (`_Members`), whose number halves with each round once the bracket reaches the
    data; a cluster is done when none is left inside (at most one round per bit of the dtype). Comparisons are on the
    values (float64, exact), so `-0.0` and `+0.0` are one value.
    """
    device = members.u.device
    infinity = torch.tensor(float("inf"), dtype=dtype, device=device)
    floor = _ordered_keys(-infinity)
    lo = (floor - 1).expand(k).clone()  # below every key: G = 0 there
    hi = _ordered_keys(infinity).expand(k).clone()  # above every member's key

    def value(keys):  # the candidate values, float64, +0.0 for -0.0
        return _key_values(keys, dtype).to(torch.float64) + 0.0

    below_excess, below_weight = (torch.zeros(k, dtype=torch.float64, device=device) for _ in range(2))
    inside = torch.ones(k, dtype=torch.bool, device=device)  # members may lie strictly between lo and hi
    while True:
        searching = inside & (lo + 1 < hi)
        if not bool(searching.any()):
            break
        middle = torch.where(searching, (lo >> 1) + (hi >> 1) + (lo & hi & 1), hi)  # floor((lo + hi) / 2)
        candidate = value(middle)
        excess, weight_at_or_below, left_below, left_above = reduce_sum(members.round(candidate, searching))
        linear = torch.where(below_weight > 0, below_weight * (candidate - value(lo.clamp(min=floor))), 0.0)
        total = below_excess + linear + excess  # G at the candidate
        enough = searching & (total >= 1)
        rising = searching & ~enough
        hi, lo = torch.where(enough, middle, hi), torch.where(rising, middle, lo)
        below_excess = torch.where(rising, total, below_excess)
        below_weight = torch.where(rising, below_weight + weight_at_or_below, below_weight)
        inside = torch.where(enough, left_below > 0, torch.where(rising, left_above > 0, inside))
        members.narrow(enough, rising)
    return value(hi)


class _Members:
    """
    This process's members of each cluster for `_sparsemax_bounds` (label >= 0, weight > 0): `u_i = 0 - s_i` in the
    scores' dtype (+0 for a score of -0), widened to float64, and `w_i` (1 without weights), and which of them are
    inside each cluster's bracket. With the compiled loops (`cpu_kernels.sparsemax_members`) they are grouped by
    cluster in point order, and the members inside a bracket are one range, compacted by each round
    (`cpu_kernels.sparsemax_round`, which applies the previous round's decision): a round costs the members inside the
    brackets, no `n`-sized tensor. Else PyTorch keeps the members inside as a subset, taken again after each round.
    Either way a round's sums run in point order.
    """

    def __init__(self, score: torch.Tensor, labels: torch.LongTensor, weight: torch.Tensor | None, k: int):
        self.k = k
        self.grouped = cpu_kernels.sparsemax_members(labels, score, weight, k)
        if self.grouped is not None:
            self.u, self.w, starts = self.grouped
            self.lower, self.upper = starts[:-1].clone(), starts[1:].clone()
            self.inside = (torch.empty_like(self.u), torch.empty_like(self.w))  # the members inside, compacted
            self.previous, self.keep = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.long)
            return
        if weight is None:
            weight = torch.ones_like(score, dtype=torch.float64)
        index = torch.nonzero((labels >= 0) & (weight > 0))[:, 0]
        self.group, self.u, self.w = labels[index], (0.0 - score[index]).to(torch.float64), weight[index]
        self.every = (self.group, self.u, self.w)

    def round(self, candidate: torch.Tensor, searching: torch.BoolTensor) -> torch.Tensor:
        """
        This process's `(4, k)` sums at the candidates `v` over the members inside the brackets (those of searching
        clusters): `Σ_{u_i < v} w_i (v - u_i)`, `Σ_{u_i <= v} w_i`, and the numbers of members below and above `v`.
        """
        k = self.k
        if self.grouped is not None:
            sums = cpu_kernels.sparsemax_round(self.u, self.w, *self.inside, self.lower, self.upper, self.previous,
                                               self.keep, candidate, searching)
            self.u, self.w, self.previous = *self.inside, candidate
            return sums
        self.gap = candidate[self.group] - self.u  # > 0: below the candidate
        side = torch.bincount(self.group * 3 + (self.gap.sign() + 1).to(torch.long), minlength=3 * k).view(k, 3)
        self.side = side
        return torch.stack([
            torch.bincount(self.group, self.w * self.gap.clamp(min=0), minlength=k),
            torch.bincount(self.group, self.w * (self.gap >= 0), minlength=k),
            side[:, 2].to(torch.float64),  # below the candidate
            side[:, 0].to(torch.float64),  # above it
        ])

    def narrow(self, enough: torch.BoolTensor, rising: torch.BoolTensor) -> None:
        """Keeps the members inside the new brackets: below the candidate where `enough`, above it where `rising`."""
        if self.grouped is not None:  # applied by the next round
            self.keep = enough.long().neg() + rising.long()
            return
        kept = torch.where(enough, self.side[:, 2], self.side[:, 0])  # this process's members left inside
        if int(kept.sum()) < len(self.u):
            index = torch.nonzero(torch.where(enough[self.group], self.gap > 0, self.gap < 0))[:, 0]
            self.group, self.u, self.w = self.group[index], self.u[index], self.w[index]

    def support_sums(self, bounds: torch.Tensor) -> torch.Tensor:
        """`Σ w_i s_i` and `Σ w_i` `(2, k)` over each cluster's members with `u_i < bounds_j` (its support), in point
        order."""
        if self.grouped is not None:
            u, w, starts = self.grouped
            return cpu_kernels.sparsemax_support_sums(u, w, starts, bounds)
        group, u, w = self.every
        w = torch.where(u < bounds[group], w, 0.0)
        k = self.k
        sums = torch.stack([torch.bincount(group, w * -u, minlength=k), torch.bincount(group, w, minlength=k)])
        return sums.to(torch.float64)  # bincount of no members gives int64 zeros: every process sends float64


def _ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """
    int64 keys of float `values` in the order of the values (`-inf` lowest, `-0.0` just below `+0.0`): the bit
    pattern as a signed integer, with the magnitude bits of a negative value flipped (`_key_values` inverts it).
    """
    pattern = values.view(_BITS[values.element_size()])
    return torch.where(pattern < 0, pattern ^ torch.iinfo(pattern.dtype).max, pattern).to(torch.int64)


def _key_values(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The floats of `dtype` whose `_ordered_keys` are `keys`."""
    pattern = keys.to(_BITS[torch.finfo(dtype).bits // 8])
    return torch.where(pattern < 0, pattern ^ torch.iinfo(pattern.dtype).max, pattern).view(dtype)


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # the signed integer of each float width, in bytes


def _statistics(model, points: torch.Tensor, parameters, weights=None, labels=None) -> torch.Tensor:
    """
    The update's sufficient statistics `(1, k, width)` in float64 over `points` `(n, d)` (weighted): those of their
    assignment to `parameters` (`model.statistics`), or of the given `labels` `(1, n)` (`model.accumulate`). An
    empty chunk (an empty shard) is given the centroids as points, of weight 0: the model takes no empty problem.
    """
    if labels is None and points.shape[0] == 0:
        points = parameters["centroids"][0]
        weights = points.new_zeros(points.shape[0], dtype=torch.float64)
    weighted = {} if weights is None else {"sample_weight": weights[None]}
    if labels is not None:
        return model.accumulate(labels, points[None], **weighted)
    return model.statistics(points[None], parameters, **weighted, points_seen=True)


def _labels(model, points: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
    """
    The labels `(1, n)` of `points` `(n, d)` under `parameters`, both cast to the model's dtype (`model.assign`,
    without the assignment). An empty chunk (an empty shard) is given the centroids as points, whose rows are
    dropped: the model takes no empty problem, and a point's label depends only on it and the parameters.
    """
    parameters = {name: value.to(model.dtype) for name, value in parameters.items()}
    n = points.shape[0]
    chunk = points.to(model.dtype) if n else parameters["centroids"][0]
    return model.assign(chunk[None], parameters, output_assignments=False, points_seen=True)[0][:, :n]


def _final_pass(model, chunks, parameters: dict[str, torch.Tensor], processes: Processes, labels_output,
                overwrite: bool, shard_size: int) -> torch.Tensor:
    """
    The labels of the returned parameters (`_labelled`), written to `labels_output` if given (built whole, see
    `shared_output_directory`), and the totals `(k + 1,)` float64 over all processes: the cluster sizes, then the
    inertia of the points as the model sees them (the model's `labelled_inertia`).
    """
    k = model.config.num_clusters
    totals = parameters["centroids"].new_zeros(k + 1)
    shared = nullcontext() if labels_output is None else _shared_directory(Path(labels_output), overwrite, processes)
    with shared as directory, _LabelsWriter(directory, processes) as writer:
        for indices, points, weights, labels in _labelled(model, chunks, parameters, processes.reduce_sum,
                                                          shard_size):
            weights = None if weights is None else weights[None]
            totals[k] += labelled_inertia(points[None], parameters["centroids"], labels, weights)[0]
            labelled = labels[0][labels[0] >= 0]
            totals[:k] += torch.bincount(labelled, minlength=k).to(torch.float64)
            writer.write(indices, labels[0])
    return processes.reduce_sum(totals)


class _LabelsWriter:
    """
    Writes a process's labels chunk by chunk to `directory/part-{rank:05d}-of-{world:05d}.parquet` (if any), under a
    temporary name in `directory` renamed to the part's name once its Parquet footer is written.
    """

    schema = pa.schema([("index", pa.int64()), ("label", pa.int64())])

    def __init__(self, directory, processes: Processes):
        self.directory, self.processes, self.writer = directory, processes, None
        self.stack = ExitStack()

    def __enter__(self) -> "_LabelsWriter":
        if self.directory is not None:
            name = f"part-{self.processes.rank:05d}-of-{self.processes.world:05d}.parquet"
            temporary = self.stack.enter_context(replacing_file(Path(self.directory) / name))
            self.writer = pq.ParquetWriter(temporary, self.schema)
            self.stack.callback(self.writer.close)
        return self

    def write(self, indices: np.ndarray, labels: torch.Tensor) -> None:
        if self.writer is not None:
            columns = {"index": pa.array(indices, pa.int64()), "label": pa.array(labels.cpu().numpy(), pa.int64())}
            self.writer.write_table(pa.table(columns, schema=self.schema))

    def __exit__(self, *exception) -> None:
        self.stack.__exit__(*exception)


def _validate_shard(shard, features, name: str, device, processes: "Processes", spec,
                    weight_column=None) -> tuple[int, int, float]:
    """
    Read the shard once, checking every row (and, for a `unit_norm` variant, that no point is 0: it needs a
    direction; the weights: finite and >= 0, with a positive total); agree across processes; return the number of
    rows of this shard, that of all shards, and the largest `|coordinate|` of all of them.
    """
    rows, problem, total_weight, largest = 0, None, 0.0, 0.0
    try:
        for indices, table in shard():
            values = features.values(table, indices)
            if weight_column is not None:
                weights = _weights(table, weight_column)
                bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
                if len(bad):
                    raise ValueError(
                        f"The weight column {weight_column!r} of {name} must hold finite numbers >= 0; row "
                        f"{indices[bad[0]]} holds {weights[bad[0]]!r}."
                    )
                total_weight += float(weights.sum())
            if spec.unit_norm:
                zero = np.flatnonzero(~values.any(axis=1))
                if len(zero):
                    raise ValueError(
                        f"{spec.title.capitalize()} needs non-zero points, but row {indices[zero[0]]} of {name} is 0 "
                        "and has no direction."
                    )
            rows += table.num_rows
            if values.size:  # no |values| copy
                largest = max(largest, float(values.max()), -float(values.min()))
    except ValueError as error:
        problem = error
    outcome = processes.reduce_sum(
        torch.tensor([rows, 0 if problem is None else 1, total_weight], dtype=torch.float64, device=device)
    )
    if problem is not None:
        raise problem
    if outcome[1] > 0:
        raise ValueError(f"{name} has invalid rows in the part read by another process (see its error).")
    if weight_column is not None and not outcome[2] > 0:
        raise ValueError(f"The weight column {weight_column!r} of {name} sums to 0: no row would count.")
    magnitude = processes.reduce_max(torch.tensor([largest], dtype=torch.float64, device=device))
    return rows, int(outcome[0]), float(magnitude[0])


def _checked_values(features: FeatureColumns, table: pa.Table, indices: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """
    The points of a chunk that the reading pass has checked, `(rows, d)`. Columns of float32 and float64 are copied
    once into an array of the wider of their type and the model's `dtype` (float32 columns and a float32 model: no
    float64 copy, every value exactly as read and as the model sees it); other tables are read by
    `FeatureColumns.values` (float64).
    """
    kinds = [table.schema.field(name).type for name in features.names]
    floats = (pa.float32(), pa.float64())
    plain = not any(features.is_list) and all(kind in floats for kind in kinds)
    if not plain or dtype not in (torch.float32, torch.float64):
        return features.values(table, indices)
    wide = pa.float64() in kinds or dtype == torch.float64
    values = np.empty((table.num_rows, len(kinds)), dtype=np.float64 if wide else np.float32)
    for position, name in enumerate(features.names):
        column = table.column(name)
        values[:, position] = (column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)).to_numpy()
    return values


def _seen_values(spec, values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """
    A chunk's checked points as the model sees them, in the model's `dtype`: unit-normalised for a `unit_norm`
    variant (`spec.seen_points`, row by row, so the same numbers as one call on all points), once per point when
    read, not once per pass: every pass (and the scratch file) holds these, and the model is told so
    (`points_seen`). A `unit_norm` variant is invariant under scaling, so no rescaling exponent applies to it.
    """
    if not spec.unit_norm:
        return values
    return spec.seen_points(torch.from_numpy(values).to(dtype)).numpy()


def _read_ahead(items: Iterator) -> Iterator:
    """
    The items of `items`, the next one read by a thread while the caller works on the current one (Parquet decoding
    and the model's kernels release the GIL, so reading overlaps computing): memory holds at most two chunks. An
    error in the reader is raised here; leaving the loop early stops the reader.
    """
    import queue
    import threading

    ready, stop, done = queue.Queue(maxsize=1), threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as error:  # re-raised in the consumer
            put((None, error))

    reader = threading.Thread(target=produce, name="points-reader", daemon=True)
    reader.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        reader.join()


class _ScratchFile:
    """
    A process's decoded chunks in a private scratch file: `chunks(decoded)` passes `decoded()`'s chunks through
    while writing them (the first pass), then reads them back from the file (every later pass). The file lies in a
    new temporary directory, removed when the context is left, on an error or an interrupt too.
    """

    def __init__(self, directory=None):
        self.directory, self.file, self.layout, self.complete = directory, None, [], False

    def __enter__(self) -> "_ScratchFile":
        import tempfile

        self.temporary = tempfile.TemporaryDirectory(prefix="kmeans-transformer-points-", dir=self.directory)
        try:
            self.file = open(Path(self.temporary.name) / "chunks.bin", "w+b", buffering=0)
        except BaseException:
            self.temporary.cleanup()
            raise
        return self

    def __exit__(self, *exception) -> None:
        try:
            self.file.close()
        finally:
            self.temporary.cleanup()

    def chunks(self, decoded) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        return self._read() if self.complete else self._write(decoded())

    def _write(self, items) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        self.file.seek(0)
        self.file.truncate()
        self.layout = []
        for indices, values, weights in items:
            parts = [np.ascontiguousarray(indices, dtype=np.int64), np.ascontiguousarray(values)]
            parts += [] if weights is None else [np.ascontiguousarray(weights, dtype=np.float64)]
            try:
                for part in parts:
                    self.file.write(memoryview(part).cast("B"))
            except OSError as error:
                raise OSError(
                    f"Cannot write points mode's scratch file in {self.temporary.name}: "
                    f"{' '.join(str(error).split())}; pass cache_directory with room for the data (--cache-directory)"
                    ", or cache='none' (--cache none) to decode the dataset on every pass."
                ) from error
            self.layout.append([(part.dtype, part.shape) for part in parts])
            yield indices, values, weights
        self.complete = True

    def _read(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        offset = 0
        for layout in self.layout:
            parts = []
            for dtype, shape in layout:
                part = np.empty(shape, dtype=dtype)
                view = memoryview(part).cast("B")
                done = 0
                while done < len(view):  # os.preadv may return fewer bytes than asked
                    read = os.preadv(self.file.fileno(), [view[done:]], offset + done)
                    if read == 0:
                        raise OSError(f"points mode's scratch file in {self.temporary.name} is shorter than written.")
                    done += read
                offset += len(view)
                parts.append(part)
            yield parts[0], parts[1], parts[2] if len(parts) > 2 else None


def _weights(table: pa.Table, name: str) -> np.ndarray:
    """The weight column `name` of an Arrow chunk as float64 (nulls as NaN, refused by the check)."""
    column = table.column(name)
    return column.to_numpy(zero_copy_only=False).astype(np.float64) if column.null_count == 0 else np.asarray(
        column.to_pandas(), dtype=np.float64)


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
    refuse_dataset_dict(dataset)
    if not isinstance(dataset, str | Path):
        raise TypeError(
            "`dataset` must be a datasets.Dataset, a datasets.IterableDataset, a .parquet file or a save_to_disk "
            f"directory, got {type(dataset).__name__}."
        )
    path = Path(dataset)
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    refuse_partial(path)
    if path.is_dir():
        return _DatasetSource(load_saved_dataset(path), str(path))
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"Cannot read {path}: points mode reads .parquet files and save_to_disk directories.")
    return _ParquetSource(path)


def _select_features(source, columns, weight_column=None) -> FeatureColumns:
    """
    The feature columns of `source` (`tabular.FeatureColumns`, from its Arrow schema); the `weight_column`, which
    must be a numeric column, is no feature.
    """
    schema = source.schema
    types = {name: schema.field(name).type for name in schema.names}
    if weight_column is not None:
        require_columns(list(types), [weight_column], source.name)
        if not is_number_type(types[weight_column]):
            raise ValueError(
                f"The weight column {weight_column!r} of {source.name} is not numeric (type {types[weight_column]})."
            )
        if columns is not None and weight_column in ([columns] if isinstance(columns, str) else columns):
            raise ValueError(f"Column {weight_column!r} cannot be both a feature and the weights.")
        if columns is None:
            columns = [name for name in types if name != weight_column and is_number_type(types[name])]
            if not columns:
                raise ValueError(f"{source.name} has no numeric columns besides {weight_column}.")
    return FeatureColumns.select(types, columns, source.name)


# ---------------------------------------------------------------------------------------------------------------------
# The command's output directory: `centroids.parquet`, `labels/` and `summary.json`, written last: the marker that the
# output is complete, which readers check.
# ---------------------------------------------------------------------------------------------------------------------

OUTPUT_MARKER = "summary.json"
OUTPUT_NAMES = ("centroids.parquet", "labels", OUTPUT_MARKER)


@dataclass
class PointsOutput:
    """A complete points-mode output, read back: its summary, the centroids table and the labels, sorted by row."""

    summary: dict
    centroids: "pd.DataFrame"  # noqa: F821
    labels: "pd.DataFrame"  # noqa: F821


def write_points_output(result: PointsResult, directory, num_processes: int, **summary) -> None:
    """
    Write `result` into the output `directory` (whose `labels/` `cluster_points` wrote): `centroids.parquet` (columns
    `cluster`, `x0`, ..., `size`), then `summary.json` (`summary`'s entries, the numbers of points, clusters,
    iterations and processes, the inertia), last: its presence says the output is complete. Each file is written
    under a temporary name and renamed into place.
    """
    directory = Path(directory)
    k, d = result.centroids.shape
    columns = {"cluster": np.arange(k, dtype=np.int64), **{f"x{i}": result.centroids[:, i] for i in range(d)}}
    columns["size"] = np.asarray(result.cluster_sizes, dtype=np.int64)
    with replacing_file(directory / "centroids.parquet") as temporary:
        pq.write_table(pa.table(columns), temporary)
    summary = {
        **summary,
        "num_points": int(result.num_points),
        "num_clusters": int(k),
        "num_iterations": int(result.num_iterations),
        "num_processes": int(num_processes),
        "inertia": float(result.inertia),
    }
    with replacing_file(directory / OUTPUT_MARKER) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")


def is_points_output(path) -> bool:
    """Whether the directory `path` holds nothing but a points-mode output's entries (complete or not)."""
    names = {entry.name for entry in Path(path).iterdir()}
    return bool(names) and names <= set(OUTPUT_NAMES)


def check_points_output(path) -> dict:
    """
    The summary of the complete points-mode output `path`, read without its data. An incomplete output is a one-line
    `ValueError`: a temporary name (a run in progress, or killed), no `summary.json` (it is written last), or label
    parts other than the `num_processes` the summary names.
    """
    path = Path(path)
    refuse_partial(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a points-mode output directory.")
    marker = path / OUTPUT_MARKER
    if not marker.is_file():
        raise ValueError(
            f"{path} is not a complete points-mode output: it has no {OUTPUT_MARKER}, which is written last (the run "
            "that wrote it did not finish); run it again with --overwrite."
        )
    try:
        summary = json.loads(marker.read_text())
        world = int(summary.get("num_processes", 0))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"Cannot read {marker}: {' '.join(str(error).split())}") from error
    found = sorted(part.name for part in (path / "labels").glob("*.parquet"))
    expected = [f"part-{rank:05d}-of-{world:05d}.parquet" for rank in range(world)]
    if world and found != expected:
        raise ValueError(
            f"{path} is not a complete points-mode output: labels/ holds {len(found)} parts, but the run that wrote it "
            f"had {world} processes ({', '.join(expected[:2])}{', ...' if world > 2 else ''})."
        )
    if not (path / "centroids.parquet").is_file():
        raise ValueError(f"{path} is not a complete points-mode output: it has no centroids.parquet.")
    return summary


def load_points_output(path) -> PointsOutput:
    """
    Read back the complete points-mode output `path` (checked by `check_points_output`): the summary, the centroids
    and every point's label (one row per point, sorted by `index`; all in memory).
    """
    import pandas as pd

    summary = check_points_output(path)
    path = Path(path)
    parts = sorted((path / "labels").glob("*.parquet"))
    try:
        centroids = pd.read_parquet(path / "centroids.parquet")
        tables = [pq.read_table(part) for part in parts]
        labels = pa.concat_tables(tables) if tables else _LabelsWriter.schema.empty_table()
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"Cannot read the points-mode output {path}: {' '.join(str(error).split())}") from error
    labels = labels.to_pandas().sort_values("index", kind="stable").reset_index(drop=True)
    if "num_points" in summary and len(labels) != summary["num_points"]:
        raise ValueError(
            f"{path} is not a complete points-mode output: {len(labels)} labels for {summary['num_points']} points."
        )
    return PointsOutput(summary, centroids, labels)


__all__ = [
    "PointsOutput",
    "PointsResult",
    "ProcessGroupError",
    "check_points_output",
    "cluster_points",
    "load_points_output",
    "shared_output_directory",
    "write_points_output",
]
