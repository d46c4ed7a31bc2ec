"""Per-iteration time of Lloyd's k-means: `KMeansTransformerModel` against scikit-learn, faiss, fast-pytorch-kmeans
and torch-kmeans (and, with `--device cuda`, cuML and faiss-gpu), side by side in one run.

Every library gets the same float32 data (a seeded Gaussian mixture: k centres, unit noise, centres spread so that
neighbouring clusters overlap a little) and the same initial centroids (k distinct data points picked by a seeded
permutation), and runs exactly `--iterations` Lloyd iterations (early stopping disabled; where a library may still
stop, its time is divided by the iterations it ran). Each measurement is one untimed warm-up run of one iteration,
then `--repeats` timed runs (`time.perf_counter`, CUDA synchronised); the tables give the median and the spread
(min-max) of the per-iteration milliseconds. No further timed run starts once a measurement has spent `--time-budget`
seconds (default 30) in timed runs, so a slow library gets fewer repeats (at least one), and the report says so.

Cases: five single problems, plus two batches of small problems that the model and torch-kmeans take in one call and
the other libraries loop over in Python (the per-iteration time of a batch is the loop time divided by the
iterations). Every library uses the same number of threads (torch, the OpenMP/BLAS pools through threadpoolctl, and
faiss's OpenMP).

Also reported:
  * agreement: the fraction of the model's final labels equal to scikit-learn's, and the largest absolute centroid
    difference of every library from scikit-learn's (libraries differ only in how they treat empty clusters, and
    torch-kmeans adds 1e-6 to every coordinate difference in its distances);
  * memory of the single problems (the model, scikit-learn and faiss), each in a fresh subprocess: after generating
    the data and warming up on a small slice, VmRSS is read, the peak is reset through /proc/self/clear_refs, the
    problem is run, and extra = VmHWM - VmRSS (on CUDA, the model's `torch.cuda.max_memory_allocated` above what was
    allocated before the call);
  * the float32 matmul throughput of the machine measured with torch, and the fraction of it the model reaches,
    counting 2 n k d flops per iteration.

Writes `speed.md` (tables and targets), `speed.png` (bar chart) and `speed.json` (raw timings) to `--output-dir`
(default: a new directory `speed-<date>-<time>` in the current one); existing results there are refused unless
`--overwrite`, and each file is written under a temporary name and renamed into place. The recorded results of this
repository are in docs/benchmarks/ (regenerate them with `--output-dir docs/benchmarks --overwrite`).

    python benchmarks/speed.py --quick                 # a tiny grid, under a minute
    python benchmarks/speed.py                         # the full grid (CPU, about 15 minutes on 2 cores)
    python benchmarks/speed.py --cases n100000_d2_k8 B1000_n200_d2_k4
    python benchmarks/speed.py --device cuda --gpu-large  # the model and the torch peers on the GPU, plus 1e7 x 128

On `--device cuda` scikit-learn and faiss-cpu stay on the CPU as references (skipped for the `--gpu-large` case),
and TF32 is off everywhere, so matmuls are true float32. Two GPU peers join the run there (on the CPU they are not
in the list at all); each is reported unavailable, with the reason, when it is not installed or sees no GPU:
  * cuml: `cuml.cluster.KMeans(init=c0, n_init=1, max_iter=N, tol=0, output_type="cupy")` on data already in GPU
    memory (a cupy array), one fit per problem; tol = 0 leaves only a strict rise of the inertia or a centroid shift
    below 0 to stop it, and the iterations are its `n_iter_`;
  * faiss-gpu: the faiss runner with one `GpuIndexFlatL2` (made beforehand) as the index of every fit: faiss's
    `Clustering` keeps the points and the centroid update on the host and pages the points through the GPU index for
    the assignment, as faiss-gpu's k-means always does.
The GPU targets: at n = 1e7, d = 128, k = 1024 at most 1.0x the fastest of cuML and faiss-gpu per iteration and at
least 60% of the measured matmul throughput; every batch of small problems at most 0.3 ms per iteration.
benchmarks/gpu_check.sh installs the peers and runs this grid on a GPU machine.

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kmeans_transformer.files import check_new_path, replacing_file

REPO_ROOT = Path(__file__).resolve().parents[1]
OURS = "kmeans_transformer"
LIBRARIES = (OURS, "scikit-learn", "faiss", "fast-pytorch-kmeans", "torch-kmeans")
GPU_PEERS = ("cuml", "faiss-gpu")  # in the run only with --device cuda
CPU_ONLY = ("scikit-learn", "faiss")
MEMORY_LIBRARIES = (OURS, "scikit-learn", "faiss")
CENTRE_DISTANCE = 4.0  # typical distance between two mixture centres, in units of the noise's standard deviation
GPU_LARGE_MAX_RATIO = 1.0  # GPU targets: the model / the fastest GPU peer at the large case, at most
GPU_GEMM_FRACTION = 0.6  # the model's fraction of the measured matmul throughput at the large case, at least
GPU_BATCHED_MAX_MS = 0.3  # per-iteration time of a batch of small problems on the GPU, at most
MIB = 2**20


@dataclass(frozen=True)
class Case:
    """One benchmark case: `batch` problems of `n` points in `d` dimensions, `k` clusters each."""

    n: int
    d: int
    k: int
    batch: int = 1
    batched: bool = False

    @property
    def name(self) -> str:
        prefix = f"B{self.batch}_" if self.batched else ""
        return f"{prefix}n{self.n}_d{self.d}_k{self.k}"


GRID = (Case(100_000, 2, 8), Case(100_000, 32, 64), Case(200_000, 64, 256), Case(50_000, 128, 1024),
        Case(1_000_000, 16, 32))
BATCHED = (Case(200, 2, 4, 1000, True), Case(1024, 32, 16, 256, True))
QUICK = (Case(3000, 2, 4), Case(2000, 16, 32), Case(100, 2, 4, 50, True), Case(256, 8, 8, 8, True))
GPU_LARGE = (Case(10_000_000, 128, 1024),)
ALL_CASES = {case.name: case for case in GRID + BATCHED + QUICK + GPU_LARGE}


@dataclass
class Problem:
    """The data of a case: `points` `(batch, n, d)` and initial centroids `init` `(batch, k, d)`, float32."""

    case: Case
    points: np.ndarray
    init: np.ndarray


@dataclass
class Fit:
    """What one run returns: centroids `(batch, k, d)`, labels `(batch, n)` under them where the library gives them
    (None otherwise), and the Lloyd iterations it ran (mean over the problems of a loop)."""

    centroids: Any
    labels: Any
    iterations: float


@dataclass
class Timing:
    """Per-iteration milliseconds of the timed runs of one library on one case, or why there are none."""

    per_iteration_ms: list[float] = field(default_factory=list)
    iterations: float = 0.0
    note: str = ""
    unavailable: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.per_iteration_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.per_iteration_ms) if self.ok else math.nan


# --------------------------------------------------------------------------------------------------------------------
# Data, threads, machine
# --------------------------------------------------------------------------------------------------------------------


def make_problem(case: Case, seed: int) -> Problem:
    """A seeded Gaussian mixture per problem (float32) and k distinct points of it as initial centroids."""
    rng = np.random.default_rng([seed, case.batch, case.n, case.d, case.k])
    points = np.empty((case.batch, case.n, case.d), dtype=np.float32)
    init = np.empty((case.batch, case.k, case.d), dtype=np.float32)
    spread = CENTRE_DISTANCE / math.sqrt(2 * case.d)
    chunk = 1_000_000
    for b in range(case.batch):
        centres = rng.normal(scale=spread, size=(case.k, case.d)).astype(np.float32)
        for start in range(0, case.n, chunk):
            stop = min(case.n, start + chunk)
            block = points[b, start:stop]
            block[:] = rng.standard_normal((stop - start, case.d), dtype=np.float32)
            block += centres[rng.integers(case.k, size=stop - start)]
        init[b] = points[b, rng.permutation(case.n)[: case.k]]
    return Problem(case, points, init)


def libraries(device: str) -> tuple[str, ...]:
    """The libraries of a run: the GPU peers only on CUDA."""
    return LIBRARIES + GPU_PEERS if device == "cuda" else LIBRARIES


def configure_threads(threads: int) -> Any:
    """Give torch, the OpenMP/BLAS pools and faiss (where installed) `threads` threads; keep the returned limiter
    alive."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    try:
        import faiss
    except Exception:  # not installed, or its libraries fail to load: its runners report it unavailable
        pass
    else:
        faiss.omp_set_num_threads(threads)
    return threadpool_limits(limits=threads)


def disable_tf32() -> None:
    """True float32 matmuls on CUDA."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def machine_description(device: str) -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, GPU (on CUDA), load average and library versions."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    # on CUDA the faiss module (CPU and GPU indexes) comes from faiss-gpu's wheel
    faiss_dists = ((("faiss-gpu-cu12", "faiss"), ("cuml-cu12", "cuml")) if device == "cuda"
                   else (("faiss-cpu", "faiss"),))
    versions = {}
    for dist, module in (("torch", "torch"), ("transformers", "transformers"), ("kmeans-transformer", OURS),
                         ("scikit-learn", "sklearn"), *faiss_dists, ("fast-pytorch-kmeans", "fast_pytorch_kmeans"),
                         ("torch-kmeans", "torch_kmeans"), ("numpy", "numpy")):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # importable from a path without its metadata?
            try:
                versions[dist] = getattr(importlib.import_module(module), "__version__", "unknown version")
            except Exception:  # not installed, or fails to load
                versions[dist] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "versions": versions,
    }


def gemm_gflops(device: str, size: int, repeats: int) -> float:
    """Median float32 throughput of `size` x `size` @ `size` x `size` with torch, in GFLOP/s."""
    import torch

    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------------------------------------------------
# Runners: each prepares its inputs (untimed) and returns the call to time
# --------------------------------------------------------------------------------------------------------------------


def available_bytes(device: str) -> int:
    """Memory a run may use: half of MemAvailable on the CPU, 80% of the free GPU memory on CUDA."""
    if device == "cuda":
        import torch

        return int(0.8 * torch.cuda.mem_get_info()[0])
    kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemAvailable:"))
    return kib * 1024 // 2


class Unavailable(Exception):
    """A library cannot run a case; the message says why."""


def ours_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """The model, shared layers, batch in one call; `output_assignments=False` where the forward accepts it."""
    import torch

    from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel

    case = problem.case
    config = KMeansTransformerConfig(num_clusters=case.k, point_dim=case.d, num_iterations=1, share_layers=True)
    model = KMeansTransformerModel(config).eval().to(device=device, dtype=torch.float32)
    points = torch.from_numpy(problem.points if case.batched else problem.points[0]).to(device)
    init = torch.from_numpy(problem.init if case.batched else problem.init[0]).to(device)
    extra = {"output_assignments": False} if "output_assignments" in inspect.signature(model.forward).parameters else {}

    def fit(iterations: int) -> Fit:
        with torch.no_grad():
            out = model(points, centroids=init, num_iterations=iterations, **extra)
        return Fit(out.centroids, out.labels, iterations)

    return fit


def sklearn_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """`KMeans(algorithm="lloyd", init=c0, n_init=1, max_iter=N, tol=0)`, one fit per problem. It still stops at
    strict convergence (labels unchanged), so the iterations are its `n_iter_` (mean over a loop)."""
    from sklearn.cluster import KMeans

    case = problem.case

    def fit(iterations: int) -> Fit:
        centroids, labels, ran = [], [], []
        for points, init in zip(problem.points, problem.init):
            km = KMeans(n_clusters=case.k, algorithm="lloyd", init=init, n_init=1, max_iter=iterations, tol=0.0)
            km.fit(points)
            centroids.append(km.cluster_centers_)
            labels.append(km.labels_)
            ran.append(km.n_iter_)
        return Fit(np.stack(centroids), np.stack(labels), float(np.mean(ran)))

    return fit


def faiss_runner(problem: Problem, device: str, gpu: bool = False) -> Callable[[int], Fit]:
    """`faiss.Kmeans(...).train(x, init_centroids=c0)`, one per problem. `max_points_per_centroid = n` stops the
    subsampling (it samples when n > k * max_points_per_centroid), and `early_stop_threshold = -1` stops the early
    exit on an unchanged objective (the default 0.0 exits then); the iterations are those in `iteration_stats`.
    `gpu=True` assigns with a `GpuIndexFlatL2` (faiss-gpu; what `faiss.Kmeans(..., gpu=True)` builds), made once
    with its `StandardGpuResources` and reused by every fit, as `Clustering.train` resets it."""
    import faiss

    case = problem.case
    index = None
    if gpu:
        if not hasattr(faiss, "GpuIndexFlatL2") or faiss.get_num_gpus() < 1:
            raise Unavailable("faiss was built without GPU support or sees no GPU")
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(resources, case.d)

    def fit(iterations: int) -> Fit:
        centroids, ran = [], []
        for points, init in zip(problem.points, problem.init):
            km = faiss.Kmeans(case.d, case.k, niter=iterations, max_points_per_centroid=case.n,
                              min_points_per_centroid=1, early_stop_threshold=-1.0, seed=1234, verbose=False)
            if index is not None:
                km.index = index
            km.train(points, init_centroids=init)
            centroids.append(km.centroids)
            ran.append(len(km.iteration_stats))
        return Fit(np.stack(centroids), None, float(np.mean(ran)))

    return fit


def fast_pytorch_kmeans_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """`KMeans(max_iter=N, tol=-1, mode="euclidean").fit_predict(x, centroids=c0)`, one per problem: it stops when
    the squared centroid shift is <= tol, never for tol = -1. Its labels are those of the last assignment (before the
    last update), so they are not compared."""
    import torch
    from fast_pytorch_kmeans import KMeans

    case = problem.case
    needed = 3 * case.n * case.k * 4  # the (n, k) similarities and the (k, n) float and bool masks
    if needed > available_bytes(device):
        raise Unavailable(f"needs about {needed / 2**30:.0f} GiB for its dense (n, k) matrices")
    points = torch.from_numpy(problem.points).to(device)
    init = torch.from_numpy(problem.init).to(device)

    def fit(iterations: int) -> Fit:
        centroids = []
        for x, c0 in zip(points, init):
            km = KMeans(n_clusters=case.k, max_iter=iterations, tol=-1, mode="euclidean", verbose=0)
            km.fit_predict(x, centroids=c0)
            centroids.append(km.centroids)
        return Fit(torch.stack(centroids), None, iterations)

    return fit


def torch_kmeans_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """`torch_kmeans.KMeans(num_init=1, max_iter=N, tol=0, verbose=False)(x, centers=c0)` on `(batch, n, d)` in one
    call: it stops when every centre shift is < tol, never for tol = 0 (None is refused). Its distances expand points
    and centres to `batch n k` rows of d floats each, so large cases do not fit."""
    import torch
    from torch_kmeans import KMeans

    case = problem.case
    needed = 2 * case.batch * case.n * case.k * case.d * 4 + 4 * case.batch * case.n * case.k * 4
    if needed > available_bytes(device):
        raise Unavailable(f"needs about {needed / 2**30:.0f} GiB (expands points x centres to B n k d floats)")
    points = torch.from_numpy(problem.points).to(device)
    init = torch.from_numpy(problem.init).to(device)
    def fit(iterations: int) -> Fit:
        km = KMeans(init_method="rnd", num_init=1, max_iter=iterations, tol=0.0, n_clusters=case.k, verbose=False)
        with torch.no_grad():
            result = km(points, k=case.k, centers=init.clone())
        return Fit(result.centers, result.labels, iterations)

    return fit


def faiss_gpu_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """The faiss runner with a GPU index for the assignment."""
    return faiss_runner(problem, device, gpu=True)


def cuml_runner(problem: Problem, device: str) -> Callable[[int], Fit]:
    """`cuml.cluster.KMeans(n_clusters=k, init=c0, n_init=1, max_iter=N, tol=0, output_type="cupy").fit(x)` on a cupy
    copy of the points made beforehand (c0 the host array: k x d floats copied in the fit), one fit per problem. It
    may still stop when the inertia rises or the centroid shift falls below tol, so the iterations are its `n_iter_`
    (mean over a loop); its labels are not compared."""
    import cupy
    from cuml.cluster import KMeans

    if device != "cuda" or cupy.cuda.runtime.getDeviceCount() < 1:
        raise Unavailable("cuML runs only on a CUDA device")
    case = problem.case
    points = [cupy.asarray(x) for x in problem.points]

    def fit(iterations: int) -> Fit:
        centroids, ran = [], []
        for x, c0 in zip(points, problem.init):
            km = KMeans(n_clusters=case.k, init=c0, n_init=1, max_iter=iterations, tol=0.0, output_type="cupy")
            km.fit(x)
            centroids.append(km.cluster_centers_)
            ran.append(km.n_iter_)
        return Fit(cupy.stack(centroids).get(), None, float(np.mean(ran)))

    return fit


RUNNERS: dict[str, Callable[[Problem, str], Callable[[int], Fit]]] = {
    OURS: ours_runner,
    "scikit-learn": sklearn_runner,
    "faiss": faiss_runner,
    "fast-pytorch-kmeans": fast_pytorch_kmeans_runner,
    "torch-kmeans": torch_kmeans_runner,
    "cuml": cuml_runner,
    "faiss-gpu": faiss_gpu_runner,
}


def as_numpy(values: Any) -> np.ndarray | None:
    if values is None or isinstance(values, np.ndarray):
        return values
    return values.detach().cpu().numpy()


def measure(fit: Callable[[int], Fit], iterations: int, repeats: int, device: str,
            budget_s: float) -> tuple[Timing, Fit]:
    """A warm-up run of one iteration (untimed), then up to `repeats` timed runs of `iterations`: no further run
    starts once the timed runs have taken `budget_s` seconds (so a slow case gets fewer repeats, at least one)."""
    sync = synchronizer(device)
    fit(1)
    sync()
    timing, spent = Timing(), 0.0
    while len(timing.per_iteration_ms) < repeats and (not timing.per_iteration_ms or spent < budget_s):
        start = time.perf_counter()
        result = fit(iterations)
        sync()
        elapsed = time.perf_counter() - start
        spent += elapsed
        timing.per_iteration_ms.append(1000 * elapsed / result.iterations)
    if len(timing.per_iteration_ms) < repeats:
        timing.note = f"{len(timing.per_iteration_ms)} timed run(s) of {spent / len(timing.per_iteration_ms):.0f} s"
    timing.iterations = result.iterations
    return timing, result


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------


def proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory_worker(library: str, case: Case, iterations: int, threads: int, seed: int) -> dict[str, Any]:
    """In a fresh process: generate the data, warm up on a slice, then VmHWM - VmRSS over one run (CPU)."""
    limiter = configure_threads(threads)
    problem = make_problem(case, seed)
    small = min(case.n, max(1000, 4 * case.k))
    slice_ = Problem(Case(small, case.d, case.k), problem.points[:, :small].copy(), problem.init)
    RUNNERS[library](slice_, "cpu")(1)
    fit = RUNNERS[library](problem, "cpu")
    before = proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fit(iterations)
    peak = proc_status_kib("VmHWM")
    del limiter
    return {"input_bytes": problem.points.nbytes, "extra_bytes": (peak - before) * 1024, "method": "VmHWM - VmRSS"}


def measure_memory(library: str, problem: Problem, args: argparse.Namespace) -> dict[str, Any]:
    """Memory of one library on one single problem: a subprocess on the CPU (which makes the data again), torch's
    allocator statistics for the model on CUDA."""
    if args.device == "cuda" and library == OURS:
        import torch

        fit = ours_runner(problem, "cuda")
        fit(1)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fit(args.iterations)
        torch.cuda.synchronize()
        return {"input_bytes": problem.points.nbytes, "extra_bytes": torch.cuda.max_memory_allocated() - base,
                "method": "torch.cuda.max_memory_allocated"}
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", library, "--cases", problem.case.name,
               "--iterations", str(args.iterations), "--threads", str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"unavailable": tail[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def run_case(case: Case, args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """Time every library on one case and compare their results with scikit-learn's."""
    problem = make_problem(case, args.seed)
    timings: dict[str, Timing] = {}
    fits: dict[str, Fit] = {}
    for library in libraries(args.device):
        progress.set_description(f"{case.name}: {library}")
        device = "cpu" if library in CPU_ONLY else args.device
        if library in CPU_ONLY and case in GPU_LARGE:
            timings[library] = Timing(unavailable="CPU reference skipped for the GPU-only case")
        elif library in GPU_PEERS and not cuda_available():
            timings[library] = Timing(unavailable="no CUDA device")
        else:
            try:
                timings[library], fits[library] = measure(RUNNERS[library](problem, device), args.iterations,
                                                          args.repeats, device, args.time_budget)
            except Exception as error:  # a library that cannot run a case is recorded, not fatal
                reason = str(error).splitlines()[0] if str(error) else ""
                timings[library] = Timing(unavailable=f"{type(error).__name__}: {reason}"[:160])
        progress.update()

    agreement: dict[str, Any] = {}
    reference = fits.get("scikit-learn")
    if reference is not None:
        ref_centroids = as_numpy(reference.centroids)
        for library, result in fits.items():
            agreement[library] = {"max_abs_centroid_difference":
                                  float(np.abs(as_numpy(result.centroids) - ref_centroids).max())}
        if OURS in fits:
            agreement[OURS]["label_agreement"] = float(np.mean(as_numpy(fits[OURS].labels) == reference.labels))

    memory = {}
    if not case.batched and not args.no_memory and case not in GPU_LARGE:
        for library in MEMORY_LIBRARIES:
            progress.set_description(f"{case.name}: memory of {library}")
            memory[library] = measure_memory(library, problem, args)
    return {"case": case, "timings": timings, "agreement": agreement, "memory": memory}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def summarize(result: dict[str, Any], gemm: float) -> dict[str, float]:
    """Ratios of the model's median to its peers' and its fraction of the measured matmul throughput."""
    case, timings = result["case"], result["timings"]
    ours = timings[OURS].median

    def fastest(libraries: tuple[str, ...]) -> float:
        medians = [timings[lib].median for lib in libraries if timings[lib].ok]
        return min(medians) if medians else math.nan

    flops = 2 * case.batch * case.n * case.k * case.d
    return {
        "vs_cpu_peers": ratio(ours, fastest(("scikit-learn", "faiss"))),
        "vs_gpu_peers": ratio(ours, fastest(tuple(lib for lib in GPU_PEERS if lib in timings))),
        "vs_all_peers": ratio(ours, fastest(tuple(lib for lib in timings if lib != OURS))),
        "gemm_fraction": ratio(flops / (ours / 1000), gemm * 1e9) if timings[OURS].ok else math.nan,
        "sklearn_speedup": ratio(timings["scikit-learn"].median, ours),
        "torch_kmeans_speedup": ratio(timings["torch-kmeans"].median, ours),
    }


# --------------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------------


def cell(timing: Timing) -> str:
    if not timing.ok:
        return "n/a"
    low, high = min(timing.per_iteration_ms), max(timing.per_iteration_ms)
    return f"{timing.median:.3g} ({low:.3g}–{high:.3g})"


def number(value: float, fmt: str) -> str:
    return "n/a" if math.isnan(value) else format(value, fmt)


def memory_fits(entry: dict[str, Any]) -> bool:
    return entry["input_bytes"] + entry["extra_bytes"] <= 2 * entry["input_bytes"] + 64 * MIB


def verdict(failing: list[str], missing: list[str] = ()) -> str:
    """PASS, FAIL with the cases not met, or n/a where no case could be evaluated."""
    if failing:
        return f"**FAIL** (not met: {', '.join(failing)})"
    if missing:
        return "**n/a** (not measured: " + ", ".join(missing) + ")"
    return "**PASS**"


def targets(results: list[dict[str, Any]], summaries: list[dict[str, float]], device: str) -> list[str]:
    """PASS/FAIL lines for the model's targets, over the cases that were run."""
    lines = []
    single = [(r["case"].name, s) for r, s in zip(results, summaries)
              if not r["case"].batched and r["case"] not in GPU_LARGE]
    if single:
        failing = [name for name, s in single if not s["vs_cpu_peers"] <= 1.0]
        lines.append(f"- One problem, ≤ 1.0x the fastest of scikit-learn and faiss at every grid point: "
                     f"**{'FAIL' if failing else 'PASS'}**" + (f" (not met: {', '.join(failing)})" if failing else ""))
    batched = [(r["case"].name, s) for r, s in zip(results, summaries) if r["case"].batched]
    if batched:
        failing = [name for name, s in batched
                   if not (s["sklearn_speedup"] >= 30 and s["torch_kmeans_speedup"] >= 3)]
        lines.append(f"- Batched, ≥ 30x faster than the scikit-learn loop and ≥ 3x faster than torch-kmeans: "
                     f"**{'FAIL' if failing else 'PASS'}**" + (f" (not met: {', '.join(failing)})" if failing else ""))
    measured = [(r["case"].name, r["memory"].get(OURS)) for r in results if r["memory"]]
    if measured:
        failing = [name for name, entry in measured if entry is None or "unavailable" in entry or
                   not memory_fits(entry)]
        lines.append(f"- Peak memory of the model ≤ 2x input + 64 MiB: **{'FAIL' if failing else 'PASS'}**"
                     + (f" (not met: {', '.join(failing)})" if failing else ""))
    if device != "cuda":
        return lines
    large = [(r["case"].name, s) for r, s in zip(results, summaries) if r["case"] in GPU_LARGE]
    if large:
        missing = [name for name, s in large if math.isnan(s["vs_gpu_peers"])]
        failing = [name for name, s in large if not math.isnan(s["vs_gpu_peers"])
                   and not s["vs_gpu_peers"] <= GPU_LARGE_MAX_RATIO]
        lines.append(f"- GPU, n = 1e7, d = 128, k = 1024, float32 without TF32, ≤ {GPU_LARGE_MAX_RATIO:.1f}x the "
                     f"fastest of cuML and faiss-gpu per iteration: {verdict(failing, missing)}")
        missing = [name for name, s in large if math.isnan(s["gemm_fraction"])]
        failing = [name for name, s in large if not math.isnan(s["gemm_fraction"])
                   and not s["gemm_fraction"] >= GPU_GEMM_FRACTION]
        lines.append(f"- GPU, same case, ≥ {GPU_GEMM_FRACTION:.0%} of the measured matmul throughput: "
                     f"{verdict(failing, missing)}")
    batched = [(r["case"].name, r["timings"][OURS]) for r in results if r["case"].batched]
    if batched:
        missing = [name for name, t in batched if not t.ok]
        failing = [name for name, t in batched if t.ok and not t.median <= GPU_BATCHED_MAX_MS]
        lines.append(f"- GPU, batched small problems ≤ {GPU_BATCHED_MAX_MS} ms per iteration: "
                     f"{verdict(failing, missing)}")
    return lines


def write_markdown(path: Path, meta: dict[str, Any], results: list[dict[str, Any]],
                   summaries: list[dict[str, float]]) -> None:
    machine = meta["machine"]
    libs = libraries(meta["device"])
    gpu = meta["device"] == "cuda"
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    lines = [
        "# k-means per-iteration time",
        "",
        f"Generated by `{' '.join(['python benchmarks/speed.py', *meta['argv']])}` on {meta['date']}.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, {machine['os']}"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ""),
        f"- Python {machine['python']}; {versions}",
        f"- Device of the model and the torch peers: {meta['device']}"
        + ("; scikit-learn and faiss's CPU index on the CPU as references; TF32 off" if gpu else ""),
        f"- Load average when the run started: {machine['load_average']}",
        f"- Threads: {meta['threads']}; iterations: {meta['iterations']}; repeats: {meta['repeats']} after an "
        f"untimed one-iteration warm-up (fewer once a measurement has spent {meta['time_budget_s']:g} s in timed "
        "runs); "
        "float32 everywhere, same data and initial centroids for every library",
        f"- Measured float32 matmul throughput ({meta['gemm_size']}² @ {meta['gemm_size']}², torch): "
        f"{meta['gemm_gflops']:.0f} GFLOP/s",
        "",
        "## Per-iteration time (ms, median (min–max))",
        "",
        "Batched cases: the model and torch-kmeans take the whole batch in one call; the other libraries loop over "
        "the problems, and their time is that of the whole loop. scikit-learn may stop "
        "at strict convergence: its time is divided by the iterations it ran (mean `n_iter_` over a loop).",
        "",
        "| case | " + " | ".join(libs) + " | ours / fastest of sklearn, faiss (x) | "
        + ("ours / fastest of cuML, faiss-gpu (x) | " if gpu else "")
        + "ours / fastest peer (x) | GEMM fraction | labels = sklearn | max abs Δ centroid vs sklearn |",
        "|---" * (len(libs) + 6 + gpu) + "|",
    ]
    for result, summary in zip(results, summaries):
        agreement = result["agreement"].get(OURS, {})
        lines.append(
            f"| {result['case'].name} | " + " | ".join(cell(result["timings"][lib]) for lib in libs)
            + f" | {number(summary['vs_cpu_peers'], '.2f')}"
            + (f" | {number(summary['vs_gpu_peers'], '.2f')}" if gpu else "")
            + f" | {number(summary['vs_all_peers'], '.2f')}"
            + f" | {number(summary['gemm_fraction'], '.1%')}"
            + f" | {number(agreement.get('label_agreement', math.nan), '.4%')}"
            + f" | {number(agreement.get('max_abs_centroid_difference', math.nan), '.2g')} |"
        )
    notes = [(result["case"].name, lib, t) for result in results for lib, t in result["timings"].items()
             if t.unavailable or t.note or (t.ok and t.iterations != meta["iterations"])]
    if notes:
        lines += ["", "Notes:", ""]
        for name, lib, timing in notes:
            text = timing.unavailable or "; ".join(
                part for part in (timing.note, f"ran {timing.iterations:g} iterations"
                                  if timing.iterations != meta["iterations"] else "") if part)
            lines.append(f"- {name}, {lib}: {text}")

    compared = tuple(lib for lib in libs if lib != "scikit-learn")
    lines += ["", "## Agreement with scikit-learn (max abs centroid difference)", "",
              "| case | " + " | ".join(compared) + " |", "|---" * (len(compared) + 1) + "|"]
    for result in results:
        agreement = result["agreement"]
        lines.append(f"| {result['case'].name} | " + " | ".join(
            number(agreement.get(lib, {}).get("max_abs_centroid_difference", math.nan), ".2g")
            for lib in compared) + " |")

    memory_rows = [r for r in results if r["memory"]]
    if memory_rows:
        lines += ["", "## Peak memory of one problem", "",
                  "extra = peak during the run minus resident memory before it (data generated and library warmed "
                  "up first); target for the model: input + extra ≤ 2 × input + 64 MiB.", "",
                  "| case | input (MiB) | " + " | ".join(f"{lib} extra (MiB)" for lib in MEMORY_LIBRARIES)
                  + " | model within target |", "|---" * (len(MEMORY_LIBRARIES) + 3) + "|"]
        for result in memory_rows:
            memory = result["memory"]
            input_bytes = next((e["input_bytes"] for e in memory.values() if "input_bytes" in e), math.nan)
            extras = [number(memory[lib]["extra_bytes"] / MIB, ".1f") if "extra_bytes" in memory[lib] else "n/a"
                      for lib in MEMORY_LIBRARIES]
            ours = memory.get(OURS, {})
            verdict = ("yes" if memory_fits(ours) else "no") if "extra_bytes" in ours else "n/a"
            lines.append(f"| {result['case'].name} | {number(input_bytes / MIB, '.1f')} | " + " | ".join(extras)
                         + f" | {verdict} |")
        methods = {lib: e["method"] for r in memory_rows for lib, e in r["memory"].items() if "method" in e}
        lines += ["", "Measured with: " + "; ".join(f"{lib}, {method}" for lib, method in methods.items()) + "."]
        unavailable = [(r["case"].name, lib, e["unavailable"]) for r in memory_rows
                       for lib, e in r["memory"].items() if "unavailable" in e]
        lines += [f"- {name}, {lib}: n/a ({why})" for name, lib, why in unavailable]

    lines += ["", "## Targets", "", *targets(results, summaries, meta["device"]), ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = libraries(meta["device"])
    width = 0.8 / len(libs)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(results) + 2), 5.5))
    for index, library in enumerate(libs):
        xs, medians, lows, highs = [], [], [], []
        for position, result in enumerate(results):
            timing = result["timings"][library]
            if timing.ok:
                xs.append(position + (index - (len(libs) - 1) / 2) * width)
                medians.append(timing.median)
                lows.append(timing.median - min(timing.per_iteration_ms))
                highs.append(max(timing.per_iteration_ms) - timing.median)
        ax.bar(xs, medians, width, yerr=[lows, highs], capsize=2, label=library, color=f"C{index}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)), [r["case"].name for r in results], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("per-iteration time (ms, log scale)")
    machine = meta["machine"]
    threads = f"{meta['threads']} thread" + ("s" if meta["threads"] != 1 else "")
    where = machine["gpu"] if meta["device"] == "cuda" else f"{machine['cpu']}, {threads}"
    ax.set_title(f"Lloyd k-means, {meta['iterations']} iterations: {where}, {meta['date']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def to_json(results: list[dict[str, Any]], summaries: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{
        "case": {"name": r["case"].name, "n": r["case"].n, "d": r["case"].d, "k": r["case"].k,
                 "batch": r["case"].batch, "batched": r["case"].batched},
        "timings": {lib: {"per_iteration_ms": t.per_iteration_ms, "iterations_run": t.iterations, "note": t.note,
                          "unavailable": t.unavailable} for lib, t in r["timings"].items()},
        "agreement_with_scikit_learn": r["agreement"],
        "memory": r["memory"],
        "summary": {key: (None if math.isnan(value) else value) for key, value in s.items()},
    } for r, s in zip(results, summaries)]


# --------------------------------------------------------------------------------------------------------------------


def write_reports(directory: Path, meta: dict[str, Any], results: list[dict[str, Any]], overwrite: bool) -> None:
    """speed.md, speed.png and speed.json of the cases run so far, each renamed into place when written."""
    summaries = [summarize(result, meta["gemm_gflops"]) for result in results]
    with replacing_file(directory / "speed.md", overwrite=overwrite) as path:
        write_markdown(path, meta, results, summaries)
    with replacing_file(directory / "speed.png", overwrite=overwrite) as path:
        write_plot(path, meta, results)
    with replacing_file(directory / "speed.json", overwrite=overwrite) as path:
        path.write_text(json.dumps({**meta, "results": to_json(results, summaries)}, indent=1))


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="cases: " + ", ".join(ALL_CASES))
    parser.add_argument("--iterations", type=int, default=10, help="Lloyd iterations per run (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every library (all cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of the model, fast-pytorch-kmeans and torch-kmeans")
    parser.add_argument("--time-budget", type=float, default=30.0, metavar="S",
                        help="no further timed run once a measurement has spent S seconds in them (default 30)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid, to check the script")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="run only these cases (names below)")
    parser.add_argument("--gpu-large", action="store_true", help="add n=1e7, d=128, k=1024 (needs --device cuda)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial centroids")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write the results (default: a new directory speed-<date>-<time> here)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --output-dir")
    parser.add_argument("--memory-worker", choices=MEMORY_LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.cases or () if name not in ALL_CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(ALL_CASES)}")
    if args.gpu_large and args.device != "cuda":
        parser.error("--gpu-large needs --device cuda")
    return args


def selected_cases(args: argparse.Namespace) -> list[Case]:
    if args.cases:
        return [ALL_CASES[name] for name in args.cases]
    cases = list(QUICK if args.quick else GRID + BATCHED)
    return cases + list(GPU_LARGE) if args.gpu_large else cases


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, ALL_CASES[args.cases[0]], args.iterations, args.threads,
                                       args.seed)))
        return
    if args.output_dir is None:
        args.output_dir = Path(f"speed-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    for name in ("speed.md", "speed.png", "speed.json"):  # refused before any measurement, not after
        try:
            check_new_path(args.output_dir / name, overwrite=args.overwrite)
        except FileExistsError as error:
            sys.exit(f"speed.py: error: {error}")
    from tqdm import tqdm

    limiter = configure_threads(args.threads)
    if args.device == "cuda":
        disable_tf32()
    gemm_size = 1024 if args.quick else (16384 if args.device == "cuda" else 4096)
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_description(args.device),
        "device": args.device,
        "threads": args.threads,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "time_budget_s": args.time_budget,
        "gemm_size": gemm_size,
        "gemm_gflops": gemm_gflops(args.device, gemm_size, repeats=5),
    }
    cases = selected_cases(args)
    results = []
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(cases) * len(libraries(args.device)), file=sys.stderr) as progress:
        for case in cases:
            results.append(run_case(case, args, progress))
            tqdm.write(f"{case.name}: " + ", ".join(f"{lib} {cell(t)}" for lib, t in results[-1]["timings"].items())
                       + " ms/iteration", file=sys.stderr)
            # after every case, so that a run stopped early (a time limit) keeps the cases it finished
            write_reports(args.output_dir, meta, results, overwrite=args.overwrite or len(results) > 1)
    del limiter
    print(f"wrote {', '.join(str(args.output_dir / name) for name in ('speed.md', 'speed.png', 'speed.json'))}")


if __name__ == "__main__":
    main()
