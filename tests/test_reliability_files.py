"""Checkpoints appear complete or not at all: `convert`, `KMeans.save_pretrained` and the zoo, interrupted or killed.

Every checkpoint is built in a temporary sibling directory and moved into place complete (`files.replacing_directory`);
`overwrite` replaces the previous checkpoint whole, and only once the new one is complete. The kill tests interrupt a
process that writes a checkpoint (SIGINT, SIGKILL) at random moments, and check that the output directory is absent,
or a complete checkpoint (the previous one, or the new one if the kill came after the final rename), never a mixture
or a part; and that a rerun succeeds. A process killed with SIGKILL cannot clean up: it leaves a hidden
`.NAME.*.partial` sibling, which nothing reads and which blocks nothing.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from kmeans_transformer import KMeans
from kmeans_transformer.cli import main
from kmeans_transformer.convert import build_model, convert_checkpoint
from kmeans_transformer.hub import check_checkpoint
from kmeans_transformer.zoo import ZooEntry, build_zoo


def tree(directory: Path, code: bool = True) -> dict[str, bytes]:
    """
    Every file under `directory` with its bytes; without `code`, the code files by name only (in this process the
    package's source may change between two writes while it is being edited; the kill tests run a frozen copy).
    """
    return {
        str(path.relative_to(directory)): path.read_bytes() if code or path.suffix != ".py" else b""
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def frozen_package(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that imports a copy of the package taken now, so its checkpoints never vary."""
    from importlib import resources

    import kmeans_transformer

    root = tmp_path_factory.mktemp("frozen")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(kmeans_transformer.__file__).parent, root / "kmeans_transformer", ignore=ignore)
    shutil.copytree(Path(str(resources.files("kmeans_transformer.hub_cards"))), root / "kmeans_transformer" / "hub_cards",
                    ignore=ignore, dirs_exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(root)}


def leftovers(parent: Path, *outputs: str) -> list[str]:
    """What `parent` holds besides `outputs`."""
    return sorted(name for name in os.listdir(parent) if name not in outputs)


def convert_argv(output: Path, iterations: int, *extra: str) -> list[str]:
    return ["convert", "--num-clusters", "2", "--point-dim", "2", "--num-iterations", str(iterations), "--output",
            str(output), *extra]


# ---------------------------------------------------------------------------------------------------------------------
# Failures inside the process: a full disk, Ctrl-C
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_convert_leaves_no_directory_or_the_previous_one(tmp_path, monkeypatch, capsys, failure):
    previous = tmp_path / "previous"
    assert main(convert_argv(previous, 2)) == 0
    before = tree(previous, code=False)

    def failing_save(self, path, *args, **kwargs):  # the card is written last, after the config, weights and code
        raise failure

    monkeypatch.setattr(ModelCard, "save", failing_save)
    for argv in (convert_argv(tmp_path / "new", 2), convert_argv(previous, 3, "--overwrite")):
        try:
            code = main(argv)
        except KeyboardInterrupt:  # or the command reports it and returns a status
            code = 130
        assert code != 0
        if isinstance(failure, OSError):
            assert "No space left on device" in capsys.readouterr().err
    assert leftovers(tmp_path, "previous") == []  # no partial "new", no temporary directory
    assert tree(previous, code=False) == before
    check_checkpoint(previous)
    monkeypatch.undo()
    assert main(convert_argv(tmp_path / "new", 2)) == 0  # the rerun is not blocked
    assert tree(tmp_path / "new", code=False) == before


def test_convert_overwrite_replaces_the_whole_previous_checkpoint(tmp_path, capsys):
    target = tmp_path / "ckpt"
    KMeans(2, random_state=0).fit(np.random.default_rng(0).normal(size=(20, 2))).save_pretrained(target)
    build_model(2, 2, 2).save_pretrained(tmp_path / "sharded", max_shard_size="1KB")  # an earlier, sharded save
    shutil.copy(tmp_path / "sharded" / "model.safetensors.index.json", target)
    shutil.rmtree(tmp_path / "sharded")
    assert main(convert_argv(target, 3, "--overwrite")) == 0
    # nothing of the fitted estimator's checkpoint survives: neither its files nor the stale index
    assert sorted(path.name for path in target.iterdir() if not path.name.endswith(".py")) == [
        "README.md", "config.json", "model.safetensors"]
    assert json.loads((target / "config.json").read_text())["num_iterations"] == 3
    check_checkpoint(target)
    assert leftovers(tmp_path, "ckpt") == []


def test_overwrite_refuses_a_directory_that_holds_more_than_a_checkpoint(tmp_path, capsys):
    target = tmp_path / "project"
    target.mkdir()
    (target / "analysis.ipynb").write_text("{}")
    (target / "data").mkdir()
    assert main(convert_argv(target, 2, "--overwrite")) == 2
    assert "not part of a checkpoint (analysis.ipynb, data)" in capsys.readouterr().err
    assert sorted(os.listdir(target)) == ["analysis.ipynb", "data"] and leftovers(tmp_path, "project") == []
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(FileExistsError, match="symbolic link"):
        convert_checkpoint(build_model(2, 2, 2), link)
    assert sorted(os.listdir(target)) == ["analysis.ipynb", "data"]


def test_an_interrupted_zoo_leaves_no_folder_and_overwrite_replaces_it_whole(tmp_path, monkeypatch):
    import kmeans_transformer.zoo as zoo

    entries = [ZooEntry("lloyd", 2, 2, 2), ZooEntry("spherical", 2, 2, 2)]
    calls = []

    def failing_second(model, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return convert_checkpoint(model, output_dir, **kwargs)

    monkeypatch.setattr(zoo, "convert_checkpoint", failing_second)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "zoo", entries, progress=False)
    assert leftovers(tmp_path) == []  # the first checkpoint, written, went with the rest
    monkeypatch.undo()
    build_zoo(tmp_path / "zoo", entries, progress=False)
    (tmp_path / "zoo" / "kmeans-transformer-soft-k2-d2-t2").mkdir()  # an entry of an earlier zoo
    build_zoo(tmp_path / "zoo", entries[:1], progress=False, overwrite=True)
    assert sorted(os.listdir(tmp_path / "zoo")) == ["README.md", "kmeans-transformer-lloyd-k2-d2-t2"]
    (tmp_path / "zoo" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds notes.txt"):
        build_zoo(tmp_path / "zoo", entries, progress=False, overwrite=True)
    assert (tmp_path / "zoo" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------------------------------
# Kill tests
# ---------------------------------------------------------------------------------------------------------------------

# A process that imports the package once, then runs each job it reads on stdin in a forked child (so that each
# kill costs no import): `convert` through the command's `main`, or a fitted estimator's `save_pretrained`. It prints
# the child's pid, then its wait status; while the child runs, a line `signal N` makes it send the child signal N
# (the child's parent sends it, so the pid cannot have been reused by another process).
FORK_SERVER = textwrap.dedent(
    """
    import json, os, select, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from kmeans_transformer import KMeans
    from kmeans_transformer.cli import main

    def run(job):
        if job["kind"] == "convert":
            return main(job["argv"])
        X = np.random.default_rng(0).normal(size=(60, 2))
        KMeans(job["clusters"], random_state=0).fit(X).save_pretrained(job["output"], overwrite=job["overwrite"])
        return 0

    buffer = b""

    def read_line(timeout=None):
        global buffer
        while b"\\n" not in buffer:
            if not select.select([0], [], [], timeout)[0]:
                return None
            chunk = os.read(0, 65536)
            if not chunk:
                return ""
            buffer += chunk
        line, buffer = buffer.split(b"\\n", 1)
        return line.decode()

    print("ready", sys.modules["kmeans_transformer"].__file__, flush=True)
    while True:
        line = read_line()
        if not line:
            break
        if line.startswith("signal"):  # came after its child had finished
            continue
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            code = 3
            try:
                code = run(json.loads(line))
            except KeyboardInterrupt:
                code = 130
            finally:
                os._exit(code)
        print(pid, flush=True)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            command = read_line(0.0005)
            if command and command.startswith("signal"):
                os.kill(pid, int(command.split()[1]))
        print(status, flush=True)
    """
)


class ForkServer:
    def __init__(self, log: Path, env: dict[str, str]):
        env = {**env, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env=env, cwd=log.parent,  # not the repository, whose package would shadow the frozen copy
        )
        ready, _, package = self.process.stdout.readline().strip().partition(" ")
        assert ready == "ready", log.read_text()[-3000:]
        assert package.startswith(env.get("PYTHONPATH", "")), package  # the frozen copy

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def start(self, job: dict) -> int:
        self.send(json.dumps(job))
        return int(self.process.stdout.readline())

    def signal(self, sig) -> None:
        self.send(f"signal {int(sig)}")

    def wait(self) -> int:
        return int(self.process.stdout.readline())

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-3000:]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


def snapshot(target: Path):
    """What changes when a write begins: the parent's entries, and the files of `target` with their times."""
    entries = tuple(sorted(os.listdir(target.parent)))
    try:
        files = tuple(sorted((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(target)))
    except (FileNotFoundError, NotADirectoryError):
        files = ()
    return entries, files


def alive(pid: int) -> bool:
    """Whether the process `pid` still runs (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_and_kill(server: ForkServer, job: dict, target: Path, sig, delay: float, when_writing: bool) -> dict:
    """
    Start `job`; `delay` seconds after its start (or after it begins to write into `target`'s folder, if
    `when_writing`) send it `sig`; return its wait status and the time it took to begin writing and to finish.
    """
    before = snapshot(target)
    start = time.monotonic()
    pid = server.start(job)
    writing = None
    while alive(pid):
        if writing is None and snapshot(target) != before:
            writing = time.monotonic()
            if when_writing:
                break
        if not when_writing and time.monotonic() - start >= delay:
            break
        time.sleep(0.0005)
    if when_writing:
        time.sleep(delay)
    if sig is not None:
        server.signal(sig)
    status = server.wait()
    end = time.monotonic()
    return {"status": status, "total": end - start, "write": end - (writing or end)}


def visible_tree(directory: Path) -> dict:
    """`tree(directory)` without the hidden temporary folder a save killed with SIGKILL leaves (the next save removes
    it)."""
    return {name: data for name, data in tree(directory).items() if not name.split(os.sep)[0].endswith(".partial")}


def file_by_file(killed: dict, previous: dict, new: dict) -> bool:
    """Whether `killed` is a save interrupted between its renames: the new checkpoint's files so far, the previous
    one's for the rest, each file whole."""
    return set(killed) <= set(previous) | set(new) and all(killed[name] in (previous.get(name), new.get(name)) for name in killed)


def check_after_kill(target: Path, allowed: list[dict], context: str) -> None:
    """`target` absent or one of the complete trees `allowed`; beside it, at most hidden `.partial` leftovers."""
    others = leftovers(target.parent, target.name)
    assert all(name.startswith(".") and name.endswith(".partial") for name in others), (context, others)
    if target.exists():
        assert tree(target) in allowed, (context, sorted(tree(target)))


def kill_trials(tmp_path: Path, trials, seed: int, env: dict[str, str]) -> None:
    """
    Run `trials` (`(kind, overwrite, signal, when_writing)`) against one fork server: each writes a checkpoint of
    the other kind's size over the previous one (`overwrite`) or into a new directory, is killed, checked, and rerun.
    """
    rng = random.Random(seed)
    server = ForkServer(tmp_path / "server.log", env)
    try:
        jobs = {
            "convert": lambda target, size, overwrite: {
                "kind": "convert", "argv": convert_argv(target, size, *(["--overwrite"] if overwrite else []))},
            "estimator": lambda target, size, overwrite: {
                "kind": "estimator", "output": str(target), "clusters": size, "overwrite": overwrite},
        }
        state, timing = {}, {}
        for number, (kind, overwrite, sig, when_writing) in enumerate(trials):
            parent = tmp_path / f"{kind}-{'overwrite' if overwrite else 'new'}"
            parent.mkdir(exist_ok=True)
            target = parent / "checkpoint"
            if parent not in state:  # a complete first checkpoint, timed
                first = run_and_kill(server, jobs[kind](parent / "first", 2, False), parent / "first", None, 0, True)
                assert first["status"] == 0, server.tail()
                timing.setdefault(kind, first)
                if overwrite:
                    (parent / "first").rename(target)
                else:
                    shutil.rmtree(parent / "first")
                state[parent] = (2, tree(target) if overwrite else None)
            size = 5 - state[parent][0]  # alternate between two checkpoints, 2 and 3 clusters or iterations
            previous = state[parent][1]
            window = timing[kind]["write"] if when_writing else timing[kind]["total"]
            delay = rng.uniform(0, max(window, 0.01))
            context = f"seed {seed}, trial {number}: {kind}, overwrite={overwrite}, {sig!r}, delay {delay:.4f} s"
            killed = run_and_kill(server, jobs[kind](target, size, overwrite), target, sig, delay, when_writing)
            killed_tree = visible_tree(target) if target.exists() else None
            rerun = run_and_kill(server, jobs[kind](target, size, overwrite or target.exists()), target, None, 0, True)
            assert rerun["status"] == 0, (context, server.tail())
            check_checkpoint(target)
            new = tree(target)
            if kind == "convert":  # the command replaces the directory whole
                assert killed_tree in ([previous, new] if overwrite else [None, new]), context
            else:  # save_pretrained writes into the directory file by file, each file whole (its renames)
                assert killed_tree in ([previous, new] if overwrite else [None, {}, new]) or (
                    overwrite and file_by_file(killed_tree, previous, new)), context
            check_after_kill(target, [new], context)
            state[parent] = (size, new)
            if not overwrite:
                shutil.rmtree(parent)
    finally:
        server.close()


def test_a_killed_convert_or_estimator_save_leaves_no_directory_or_a_complete_one(tmp_path, frozen_package):
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 2**32))
    trials = [
        ("convert", True, signal.SIGINT, True),
        ("convert", True, signal.SIGKILL, True),
        ("convert", False, signal.SIGKILL, False),
        ("convert", False, signal.SIGINT, True),
        ("estimator", True, signal.SIGKILL, True),
        ("estimator", False, signal.SIGINT, True),
    ]
    kill_trials(tmp_path, trials, seed, frozen_package)


@pytest.mark.slow
def test_many_kills_at_random_moments(tmp_path, frozen_package):
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 2**32))
    moments = [(kind, overwrite, sig, when) for kind in ("convert", "estimator") for overwrite in (True, False)
               for sig in (signal.SIGINT, signal.SIGKILL) for when in (True, False)]
    kill_trials(tmp_path, moments * 3, seed, frozen_package)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_the_convert_command_killed_in_a_fresh_process(tmp_path, frozen_package, sig):
    """The `kmeans-transformer convert` process itself, killed at random moments of its life, import included."""
    rng = random.Random(int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 2**32)))
    target = tmp_path / "checkpoint"
    command = [sys.executable, "-m", "kmeans_transformer.cli", *convert_argv(target, 2)]
    start = time.monotonic()
    run = {"env": frozen_package, "cwd": tmp_path}  # not the repository, whose package would shadow the frozen copy
    subprocess.run(command, check=True, capture_output=True, **run)
    duration = time.monotonic() - start
    complete = tree(target)
    for overwrite in (True, False, True, False):
        if not overwrite:
            shutil.rmtree(target)
        process = subprocess.Popen(command + (["--overwrite"] if overwrite else []), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, **run)
        time.sleep(rng.uniform(0.5 * duration, duration))
        process.send_signal(sig)
        process.wait(timeout=120)
        check_after_kill(target, [complete], f"{sig!r}, overwrite={overwrite}")
        assert target.exists() or not overwrite
        subprocess.run(command + ["--overwrite"], check=True, capture_output=True, **run)
        assert tree(target) == complete


def test_the_estimator_refuses_the_meta_device():
    import numpy as np

    from kmeans_transformer import KMeans

    with pytest.raises(ValueError, match="'meta' cannot hold data"):
        KMeans(2, device="meta").fit(np.arange(8.0).reshape(4, 2))
