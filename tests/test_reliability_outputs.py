"""Outputs appear complete or not at all, never over an input; interrupted, killed or stalled runs leave no half-output.

The command-line tests run `kmeans-transformer` in this process where they can (errors, late failures, interrupts
simulated inside a write) and as real processes where a signal must hit them: `cluster`, `infer` (problems mode) and
`infer --mode points` on two gloo processes under torchrun, interrupted (SIGINT) or killed (SIGKILL) while they write,
and in the slow run at random moments; a stopped or killed worker ends the run within `--timeout`.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.cli import main


TORCHRUN = Path(sys.executable).with_name("torchrun")
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def checkpoint(tmp_path):
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=6)).double()
    model.save_pretrained(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) + rng.integers(0, 3, size=(n, 1)) * 6.0


def write_points(path, n, seed=0):
    X = blobs(n, seed)
    pq.write_table(pa.table({"x": X[:, 0], "y": X[:, 1]}), path, row_group_size=20_000)
    return path


def save_problems(path, count, seed=0):
    rng = np.random.default_rng(seed)
    problems = [blobs(int(n), seed + i).tolist() for i, n in enumerate(rng.integers(5, 25, size=count))]
    datasets.Dataset.from_dict({"points": problems}).save_to_disk(str(path))
    return path


def run(capsys, *arguments) -> tuple[int, str]:
    """`kmeans-transformer ARGUMENTS` in this process: the exit code and stderr."""
    capsys.readouterr()
    code = main([str(argument) for argument in arguments])
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, command: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("k-means", "points mode", "problems"))]
    assert len(lines) == 1 and lines[-1].startswith(f"kmeans-transformer {command}: error: "), err
    for word in words:
        assert word in lines[-1], lines[-1]


def snapshot(directory: Path) -> dict:
    """Every file under `directory` (hidden ones included) and its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".partial"))


# ---------------------------------------------------------------------------------------------------------------------
# 7. An output that is, holds or lies inside an input is refused before any work
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ["--output", "out.csv", "--centroids", "data.csv"],
        ["--output", "data.csv"],
        ["--output", "sub/../data.csv"],
        ["--output", "link.csv"],  # a symbolic link to the input
        ["--output", "out.csv", "--save-model", "."],  # a checkpoint directory that holds the input
    ],
)
def test_cluster_refuses_an_output_that_would_overwrite_its_input(tmp_path, monkeypatch, capsys, arguments):
    monkeypatch.chdir(tmp_path)
    pd.DataFrame(blobs(60), columns=["a", "b"]).to_csv("data.csv", index=False)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "data.csv")
    (tmp_path / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    code, err = run(capsys, "cluster", "data.csv", "--n-clusters", 2, *arguments, "--overwrite", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "cluster", "would overwrite the input", "data.csv")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", ["problems", "points"])
def test_infer_refuses_an_output_that_would_overwrite_its_dataset(tmp_path, capsys, checkpoint, mode):
    if mode == "problems":
        dataset = output = save_problems(tmp_path / "probs", 20)
    else:
        (tmp_path / "run").mkdir()
        dataset, output = write_points(tmp_path / "run" / "points.parquet", 500), tmp_path / "run"
    before = snapshot(tmp_path)
    code, err = run(capsys, "infer", "--mode", mode, "--model", checkpoint, "--dataset", dataset, "--output", output,
                    "--overwrite", "--cpu", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "infer", "would overwrite the input")
    assert snapshot(tmp_path) == before


def test_infer_refuses_an_output_inside_its_model(tmp_path, capsys, checkpoint):
    dataset = save_problems(tmp_path / "probs", 5)
    code, err = run(capsys, "infer", "--model", checkpoint, "--dataset", dataset, "--output",
                    checkpoint / "results.parquet", "--cpu", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "infer", "would overwrite the input", str(checkpoint))
    assert not (checkpoint / "results.parquet").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 8. --overwrite replaces a points-mode output whole: no stale part of another process count survives
# ---------------------------------------------------------------------------------------------------------------------


def test_points_rerun_with_overwrite_leaves_no_stale_parts(tmp_path, capsys, checkpoint):
    from kmeans_transformer.points import load_points_output

    data = write_points(tmp_path / "points.parquet", 3000)
    labels = tmp_path / "run" / "labels"
    labels.mkdir(parents=True)
    stale = pa.table({"index": np.arange(3000, dtype=np.int64), "label": np.zeros(3000, dtype=np.int64)})
    for rank in range(3):  # a previous run on three processes
        pq.write_table(stale, labels / f"part-{rank:05d}-of-00003.parquet")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"num_points": 3000}))
    code, err = run(capsys, "infer", "--mode", "points", "--model", checkpoint, "--dataset", data, "--output",
                    tmp_path / "run", "--overwrite", "--cpu", "--no-progress")
    assert code == 0, err
    assert sorted(path.name for path in labels.iterdir()) == ["part-00000-of-00001.parquet"]
    output = load_points_output(tmp_path / "run")
    np.testing.assert_array_equal(output.labels["index"].to_numpy(), np.arange(3000))
    assert output.summary["num_processes"] == 1 and leftovers(tmp_path) == []


def test_points_output_refuses_a_directory_that_is_no_such_output(tmp_path, capsys, checkpoint):
    data = write_points(tmp_path / "points.parquet", 300)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    code, err = run(capsys, "infer", "--mode", "points", "--model", checkpoint, "--dataset", data, "--output",
                    tmp_path / "notes", "--overwrite", "--cpu", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "infer", "not a points-mode output")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------------------------------
# 9. A late failure, a full disk or an interrupt while writing leaves the previous outputs (or none), nothing partial
# ---------------------------------------------------------------------------------------------------------------------


def previous_cluster_outputs(tmp_path, previous: bool = True):
    pd.DataFrame(blobs(200), columns=["a", "b"]).to_csv(tmp_path / "data.csv", index=False)
    if previous:
        for name in ("out.csv", "out_centroids.csv"):
            (tmp_path / name).write_text("previous\n")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{}")
    return ["cluster", tmp_path / "data.csv", "--n-clusters", 3, "--output", tmp_path / "out.csv", "--save-model",
            tmp_path / "model", "--random-state", 0, "--no-progress"]


@pytest.mark.parametrize("previous", [False, True])
def test_a_late_save_model_failure_writes_no_output(tmp_path, monkeypatch, capsys, previous):
    from kmeans_transformer.estimator import KMeans

    arguments = previous_cluster_outputs(tmp_path, previous)
    before = snapshot(tmp_path)

    def full_disk(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(KMeans, "save_pretrained", full_disk)
    code, err = run(capsys, *arguments, *(["--overwrite"] if previous else []))
    assert code == 2
    assert_one_line_error(err, "cluster", "No space left on device")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupt_or_a_full_disk_while_writing_leaves_the_previous_outputs(tmp_path, monkeypatch, capsys, failure):
    arguments = previous_cluster_outputs(tmp_path)
    before = snapshot(tmp_path)
    to_csv = pd.DataFrame.to_csv

    def interrupted(self, path, *args, **kwargs):
        Path(path).write_text("a,b,label\n1.0,")  # half a table, then the interrupt or the error
        raise failure() if failure is KeyboardInterrupt else OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    code, err = run(capsys, *arguments, "--overwrite")
    assert code == (130 if failure is KeyboardInterrupt else 2)
    assert_one_line_error(err, "cluster")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    code, err = run(capsys, *arguments, "--overwrite")  # the rerun replaces every output
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "out.csv")) == 200 and (tmp_path / "model" / "model.safetensors").is_file()


def test_leftovers_of_a_killed_run_never_block_a_rerun(tmp_path, capsys, checkpoint):
    data = write_points(tmp_path / "points.parquet", 400)
    hidden = tmp_path / ".run.12345-0123abcd.partial"
    (hidden / "labels").mkdir(parents=True)
    (hidden / "labels" / "part-00000-of-00002.parquet").write_bytes(b"PAR1 no footer")
    (tmp_path / ".out.parquet.12345-0123abcd.partial").write_bytes(b"PAR1")
    for mode, output in (("points", tmp_path / "run"), ("problems", tmp_path / "out.parquet")):
        dataset = data if mode == "points" else save_problems(tmp_path / "probs", 8)
        code, err = run(capsys, "infer", "--mode", mode, "--model", checkpoint, "--dataset", dataset, "--output",
                        output, "--cpu", "--no-progress")
        assert code == 0, err
    with pytest.raises(ValueError, match="incomplete output"):
        from kmeans_transformer.problems import load_problems

        load_problems(hidden)


# ---------------------------------------------------------------------------------------------------------------------
# 11. Readers refuse an incomplete points-mode output (no summary.json, written last) with a clear message
# ---------------------------------------------------------------------------------------------------------------------


def test_readers_refuse_an_incomplete_points_output(tmp_path, capsys, checkpoint):
    from kmeans_transformer.points import check_points_output, load_points_output
    from kmeans_transformer.problems import load_problems

    broken = tmp_path / "killed"  # what a killed run left before: parts without a footer, no summary, no centroids
    (broken / "labels").mkdir(parents=True)
    (broken / "labels" / "part-00000-of-00002.parquet").write_bytes(b"PAR1" + bytes(100))
    for reader in (check_points_output, load_points_output):
        with pytest.raises(ValueError, match="not a complete points-mode output: it has no summary.json"):
            reader(broken)
    with pytest.raises(ValueError, match="points-mode output"):
        load_problems(broken)
    data = write_points(tmp_path / "points.parquet", 300)
    code, err = run(capsys, "infer", "--mode", "points", "--model", checkpoint, "--dataset", data, "--output", broken,
                    "--overwrite", "--cpu", "--no-progress")  # replaced whole by a rerun
    assert code == 0, err
    assert load_points_output(broken).summary["num_points"] == 300
    (broken / "labels" / "part-00001-of-00002.parquet").write_bytes(b"stale")
    with pytest.raises(ValueError, match="labels/ holds 2 parts, but the run that wrote it had 1 processes"):
        check_points_output(broken)
    (tmp_path / "truncated.parquet").write_bytes((tmp_path / "points.parquet").read_bytes()[:-100])
    with pytest.raises(ValueError, match="Cannot read .*truncated.parquet as Parquet"):
        load_problems(tmp_path / "truncated.parquet")


# ---------------------------------------------------------------------------------------------------------------------
# 15. Devices that hold no data, forged .npy headers and dangling symbolic links: one-line errors, nothing written
# ---------------------------------------------------------------------------------------------------------------------


def write_forged_npy(path):
    """A .npy header claiming 10^12 rows of two float64, over 32 bytes of data."""
    from numpy.lib import format as npy_format

    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 2)})
        handle.write(bytes(32))
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("meta device", ["device 'meta'", "cannot hold"]),
        ("forged npy", ["declares an array of shape (1000000000000, 2)"]),
    ],
)
def test_meta_device_and_forged_npy_header_are_one_line_errors(tmp_path, capsys, case, words):
    if case == "forged npy":
        source, options = write_forged_npy(tmp_path / "points.npy"), []
    else:
        source, options = tmp_path / "points.npy", ["--device", "meta"]
        np.save(source, blobs(50))
    code, err = run(capsys, "cluster", source, "--n-clusters", 2, "--output", tmp_path / "out.csv", *options,
                    "--no-progress")
    assert code == 2
    assert_one_line_error(err, "cluster", *words)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["points.npy"]


@pytest.mark.parametrize("flag", ["--output", "--save-model", "infer problems", "infer points"])
def test_a_dangling_symlink_output_is_refused_without_overwrite(tmp_path, monkeypatch, capsys, checkpoint, flag):
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()  # outside the working directory; the link points to a new name there
    monkeypatch.chdir(tmp_path / "work")
    outside = tmp_path / "elsewhere" / "target"
    name = {"--output": "link.csv", "infer problems": "link.parquet"}.get(flag, "link")
    link = tmp_path / "work" / name
    link.symlink_to(outside)
    if flag.startswith("infer"):
        mode = flag.split()[1]
        problems = mode == "problems"
        dataset = save_problems(tmp_path / "probs", 5) if problems else write_points(tmp_path / "p.parquet", 50)
        arguments = ["infer", "--mode", mode, "--model", checkpoint, "--dataset", dataset, "--output", link, "--cpu"]
    else:
        pd.DataFrame(blobs(40), columns=["a", "b"]).to_csv("data.csv", index=False)
        arguments = ["cluster", "data.csv", "--n-clusters", 2, "--output", "out.csv", flag, link]
    code, err = run(capsys, *arguments, "--no-progress")
    assert code == 2
    assert_one_line_error(err, "infer" if flag.startswith("infer") else "cluster", name, "--overwrite")
    assert not outside.exists() and link.is_symlink()
    code, err = run(capsys, *arguments, "--no-progress", "--overwrite")  # the link itself is replaced, never followed
    assert code == 0, err
    assert not outside.exists() and not link.is_symlink() and link.exists()


def test_infer_timeout_must_be_positive(tmp_path, capsys, checkpoint):
    dataset = save_problems(tmp_path / "probs", 3)
    code, err = run(capsys, "infer", "--model", checkpoint, "--dataset", dataset, "--output", tmp_path / "o.parquet",
                    "--timeout", 0, "--cpu", "--no-progress")
    assert code == 2
    assert_one_line_error(err, "infer", "--timeout must be > 0")


# ---------------------------------------------------------------------------------------------------------------------
# Kill tests: real processes, interrupted (SIGINT) or killed (SIGKILL) while they write, or at random moments
# ---------------------------------------------------------------------------------------------------------------------


def cli(*arguments, processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, "-m", "kmeans_transformer.cli", *map(str, arguments)]


def start(command, cwd) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def send(process, signum) -> None:
    """
    `signum` to the process group of `process`, as Ctrl-C or `kill` would; SIGKILL to every process of the run
    (torchrun starts its workers in sessions of their own, which a killed torchrun would leave running).
    """
    import psutil

    workers = psutil.Process(process.pid).children(recursive=True) if signum == signal.SIGKILL else []
    os.killpg(process.pid, signum)
    for worker in workers:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass


def signal_when(process, signum, ready, delay: float = 0.0, timeout: float = 300.0) -> tuple[int, str]:
    """Send `signum` to the run (`send`) once `ready()` (polled every millisecond) and `delay` seconds later."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    if process.poll() is None:
        send(process, signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def stats(directory: Path, names) -> dict:
    paths = [directory / name for name in names]
    found = [entry for path in paths if path.exists() for entry in [path, *(path.rglob("*") if path.is_dir() else [])]]
    return {str(entry): (entry.stat().st_size, entry.stat().st_mtime_ns) for entry in found}


def writing(directory: Path, names):
    """
    Whether the run has started writing: a temporary output (`.….partial`) exists in `directory` with a file in it,
    or an output among `names` changed (how a writer without temporary names starts).
    """
    before = stats(directory, names)

    def ready() -> bool:
        hidden = [path for path in directory.iterdir() if path.name.endswith(".partial")]
        if any(path.is_file() or any(entry.is_file() for entry in path.rglob("*")) for path in hidden):
            return True
        return stats(directory, names) != before

    return ready


def check_cluster(tmp_path, before: dict, signum) -> None:
    """Each output is the previous one or a complete new one; after SIGINT no temporary file is left."""
    after = snapshot(tmp_path)
    for name, length in (("out.csv", 20_000), ("out_centroids.csv", 4)):
        if after[name] != before.get(name):
            assert len(pd.read_csv(tmp_path / name)) == length
    model_files = {key for key in after if key.startswith("model/")}
    assert model_files == {key for key in before if key.startswith("model/")} or "model/model.safetensors" in after
    if signum == signal.SIGINT:
        assert leftovers(tmp_path) == []


def check_problems(tmp_path, before: dict, signum) -> None:
    from kmeans_transformer.problems import load_problems

    after = {key: value for key, value in snapshot(tmp_path).items() if key.startswith("results.parquet")}
    if after != {key: value for key, value in before.items() if key.startswith("results.parquet")}:
        assert load_problems(tmp_path / "results.parquet").num_rows == 2000
    if signum == signal.SIGINT:
        assert leftovers(tmp_path) == []


def check_points(tmp_path, before: dict, signum) -> None:
    """The previous output (one process), or a complete new one (two processes, or one for the rerun)."""
    from kmeans_transformer.points import load_points_output

    after = {key: value for key, value in snapshot(tmp_path).items() if key.startswith("run/")}
    if after != {key: value for key, value in before.items() if key.startswith("run/")}:
        output = load_points_output(tmp_path / "run")  # checks the parts against the summary's process count
        assert len(output.labels) == 50_000 and (signum is None or output.summary["num_processes"] == 2)
    if signum == signal.SIGINT:
        assert leftovers(tmp_path) == []


OUTPUT_NAMES = {
    "cluster": ["out.csv", "out_centroids.csv", "model"],
    "problems": ["results.parquet"],
    "points": ["run"],
}


def prepare(command: str, tmp_path: Path, checkpoint: Path) -> tuple[list, list, object]:
    """The arguments of a run of `command`, the launcher's arguments, and the check of its outputs."""
    if command == "cluster":
        pd.DataFrame(blobs(20_000), columns=["a", "b"]).to_csv(tmp_path / "data.csv", index=False)
        arguments = ["cluster", "data.csv", "--n-clusters", 4, "--output", "out.csv", "--save-model", "model",
                     "--random-state", 0, "--no-progress"]
        return arguments, [], check_cluster
    if command == "problems":
        save_problems(tmp_path / "probs", 2000)
        arguments = ["infer", "--model", checkpoint, "--dataset", "probs", "--output", "results.parquet", "--cpu",
                     "--no-progress"]
        return arguments, [], check_problems
    write_points(tmp_path / "points.parquet", 50_000)
    arguments = ["infer", "--mode", "points", "--model", checkpoint, "--dataset", "points.parquet", "--output", "run",
                 "--chunk-size", 500, "--cpu", "--no-progress", "--timeout", 60]
    return arguments, ["processes"], check_points


def interrupt_and_rerun(tmp_path, monkeypatch, capsys, checkpoint, command, signum, delay=None) -> int:
    """
    A previous complete output (written in this process), then a real run over it (`--overwrite`; points mode on two
    processes) interrupted while it writes (or `delay` seconds after it starts), then the checks, then a rerun (in
    this process) that must succeed. Returns the interrupted run's exit code.
    """
    arguments, launcher, check = prepare(command, tmp_path, checkpoint)
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *arguments)
    assert code == 0, err
    before = snapshot(tmp_path)
    ready = writing(tmp_path, OUTPUT_NAMES[command]) if delay is None else (lambda: True)
    process = start(cli(*arguments, "--overwrite", processes=2 if launcher else 1), tmp_path)
    interrupted, err = signal_when(process, signum, ready, delay=delay or 0.0)
    if interrupted != 0 and delay is None:  # (a SIGINT during Python's start-up has the interpreter's traceback)
        assert "kmeans_transformer/" not in err, err  # no traceback of ours
    check(tmp_path, before, signum)
    code, err = run(capsys, *arguments, "--overwrite")
    assert code == 0, err
    check(tmp_path, {}, None)  # complete and new
    return interrupted


@pytest.mark.parametrize(
    "command, signum",
    [("cluster", signal.SIGKILL), ("problems", signal.SIGINT), ("points", signal.SIGKILL)],
)
def test_a_run_interrupted_while_writing_leaves_the_previous_output(tmp_path, monkeypatch, capsys, checkpoint, command,
                                                                    signum):
    code = interrupt_and_rerun(tmp_path, monkeypatch, capsys, checkpoint, command, signum)
    print(f"the interrupted run exited with {code}")  # 0 only if it finished before the signal came


@pytest.mark.slow
@pytest.mark.parametrize("command", ["cluster", "problems", "points"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("seed", range(3))
def test_a_run_interrupted_at_a_random_moment_leaves_the_previous_output(tmp_path, monkeypatch, capsys, checkpoint,
                                                                         command, signum, seed):
    delay = float(np.random.default_rng([seed, signum, len(command)]).uniform(0.5, 12.0))
    interrupt_and_rerun(tmp_path, monkeypatch, capsys, checkpoint, command, signum, delay=delay)


# ---------------------------------------------------------------------------------------------------------------------
# 10. A stopped or killed worker ends the run within --timeout, every process with a one-line error
# ---------------------------------------------------------------------------------------------------------------------


def worker_pids(process) -> dict[int, int]:
    """The torchrun workers of `process`, by rank."""
    import psutil

    workers = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "kmeans_transformer.cli" in " ".join(child.cmdline()):
            workers[int(rank)] = child.pid
    return workers


def read_lines(stream, lines: list) -> threading.Thread:
    def read():
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGSTOP, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_a_stopped_or_killed_worker_ends_the_run_within_the_timeout(tmp_path, checkpoint, signum):
    timeout = 10
    write_points(tmp_path / "points.parquet", 50_000)
    arguments = ["infer", "--mode", "points", "--model", checkpoint, "--dataset", "points.parquet", "--output", "run",
                 "--chunk-size", 500, "--cpu", "--no-progress", "--timeout", timeout]
    process = start(cli(*arguments, processes=2), tmp_path)
    lines = []
    reader = read_lines(process.stderr, lines)
    try:
        deadline = time.monotonic() + 300
        while not leftovers(tmp_path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the temporary output exists: both processes are past their start
        workers = worker_pids(process)
        assert sorted(workers) == [0, 1], lines
        os.kill(workers[1], signum)
        stopped = time.monotonic()
        while not any("error:" in line for _, line in lines) and time.monotonic() < stopped + timeout + 60:
            time.sleep(0.05)
        errors = [(moment, line) for moment, line in lines if line.startswith("kmeans-transformer infer: error:")]
        assert errors, "\n".join(line for _, line in lines)[-3000:]
        assert errors[0][0] - stopped < timeout + 15
        # a killed worker: its peer sees the connection close, or torchrun's SIGTERM first
        assert "communication with the other processes failed" in errors[0][1] or (
            signum == signal.SIGKILL and "interrupted (SIGTERM)" in errors[0][1]
        ), errors
        if signum == signal.SIGSTOP:
            os.kill(workers[1], signal.SIGCONT)  # torchrun's SIGTERM is then delivered: it leaves with one line too
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            send(process, signal.SIGKILL)
        process.wait()
    reader.join(timeout=10)
    text = "\n".join(line for _, line in lines)
    assert process.returncode != 0 and "kmeans_transformer/" not in text, text[-3000:]  # no traceback of ours
    errors = [line for _, line in lines if line.startswith("kmeans-transformer infer: error:")]
    assert len(errors) == (2 if signum == signal.SIGSTOP else 1), text[-3000:]  # one line per surviving process
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("slow_threads", [False, True], ids=["", "slow-thread-start"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_lands_in_a_finaliser_is_raised_after_it(signum, slow_threads):
    # Python cannot raise out of `__del__`: it prints the exception as "ignored" and goes on. The command's handlers
    # send the signal again, so that the run still stops, with no traceback of ours on stderr. With threads slow to
    # start (a busy machine, made certain here), a thread started from the hook would still be starting when the
    # signal comes again, inside the hook, where it would be lost.
    slow = "threading.Thread.start = slowly" if slow_threads else ""
    script = f"""
import os, signal, threading, time
from kmeans_transformer.cli import _signals_raise, _Terminated
signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored, even where the tests run in the background
start = threading.Thread.start
def slowly(self):
    start(self)
    time.sleep(0.1)
{slow}

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), {int(signum)})
        sum(range(1000))

try:
    with _signals_raise():
        Finalised()
        deadline = __import__("time").monotonic() + 20
        while __import__("time").monotonic() < deadline:
            pass
    print("not stopped")
except (_Terminated, KeyboardInterrupt) as interrupt:
    print("stopped by", type(interrupt).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    expected = "_Terminated" if signum == signal.SIGTERM else "KeyboardInterrupt"
    assert done.stdout.strip() == f"stopped by {expected}", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "ignored" not in done.stderr, done.stderr


def test_a_sigterm_while_an_error_is_reported_does_not_interrupt_the_report():
    # torchrun sends SIGTERM to the other workers once one fails; a worker that is itself reporting an error (whose
    # types are imported only then, slowly on a busy machine) reports it on one line, without a traceback.
    script = """
import argparse, os, signal, sys, time
from kmeans_transformer import cli

errors = cli._user_errors
def slow_user_errors():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    return errors()
cli._user_errors = slow_user_errors

def fail(args):
    raise ValueError("the input is bad")

sys.exit(cli.run(argparse.Namespace(run=fail, command="infer", verbose=True)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "kmeans-transformer infer: error: the input is bad", done.stderr
