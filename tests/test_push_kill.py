"""A `push` interrupted at a random moment leaves the repository without the checkpoint or with all of it."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from hub_server import hub  # noqa: F401  (the fixture)
from test_hub import write_checkpoint


def _push(checkpoint, repo_id):
    command = [sys.executable, "-m", "kmeans_transformer.cli", "push", str(checkpoint), "--repo-id", repo_id, "--exist-ok"]
    return subprocess.Popen(command, env={**os.environ, "HF_TOKEN": "hf_write_token"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _interrupted_push_then_rerun(hub, tmp_path, signal_number, seed):
    checkpoint = tmp_path / f"ckpt-{signal_number}-{seed}"
    write_checkpoint(checkpoint)
    local = {path.name: path.read_bytes() for path in checkpoint.iterdir() if path.name != "README.md"}
    repo_id = f"alice/kill-{int(signal_number)}-{seed}"
    process = _push(checkpoint, repo_id)
    time.sleep(random.Random(seed).uniform(0.5, 15.0))  # from start-up to after the commit
    process.send_signal(signal_number)
    process.communicate(timeout=120)
    if repo_id in hub.repos:
        pushed = hub.files(repo_id)
        sent = {name for name in pushed if name in local or name == "README.md"}
        assert sent in (set(), set(local) | {"README.md"}), sorted(sent)  # nothing of it, or all of it
        assert all(pushed[name] == local[name] for name in local if name in pushed)
    rerun = _push(checkpoint, repo_id)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    pushed = hub.files(repo_id)
    assert all(pushed[name] == data for name, data in local.items()) and "README.md" in pushed


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_push_sends_all_or_nothing_and_a_rerun_succeeds(hub, tmp_path, signal_number):
    seed = int(os.environ.get("KILL_TEST_SEED", random.randrange(10**6)))
    print(f"KILL_TEST_SEED={seed}")
    _interrupted_push_then_rerun(hub, tmp_path, signal_number, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_pushes_interrupted_at_many_moments(hub, tmp_path, signal_number, seed):
    _interrupted_push_then_rerun(hub, tmp_path, signal_number, 1000 + seed)
