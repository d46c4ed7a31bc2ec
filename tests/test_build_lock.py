"""
The first-use build of the compiled CPU loops never hangs: a build lock left by a killed process is cleared, a live
build is waited for at most `KMEANS_TRANSFORMER_BUILD_TIMEOUT` seconds, and past that the PyTorch code runs with one
warning. Every process here builds into its own temporary `TORCH_EXTENSIONS_DIR`, never the shared default one.

The child processes load `cpu_kernels.py` alone (it needs torch only: seconds, not the package's ~20 s import on a
busy machine). The fast tests replace torch's compile and import steps with stubs there (the lock handling around them
is the real code); the slow test really builds, and kills a real build with SIGKILL half way.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from kmeans_transformer import cpu_kernels

fcntl = pytest.importorskip("fcntl", reason="the build lock is an fcntl.flock (POSIX)")

# The module under test, loaded by path in the child processes, as whatever `kmeans_transformer` this run imports.
LOAD_MODULE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("cpu_kernels", {str(Path(cpu_kernels.__file__).resolve())!r})
cpu_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_kernels)
"""
NAME = f"kmeans_transformer_cpu_kernels_{cpu_kernels._build_tag()}"
HANG = 120  # seconds: far beyond any wait these tests expect (a child process takes 2-10 s)

# torch's compile and import steps replaced: "building" records the call, "importing" gives a stand-in module.
STUBS = """
import types
import torch.utils.cpp_extension as cpp
built = []
cpp._write_ninja_file_and_build_library = lambda *args, **kwargs: built.append(kwargs.get("name"))
cpp._import_module_from_library = lambda name, path, is_python_module: types.SimpleNamespace(name=name, path=path)
"""

LOAD_TWICE = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first, second = cpu_kernels._load(), cpu_kernels._load()
for warning in caught:
    print("WARNING", warning.category.__name__, warning.message)
print("RESULT", first is not None, second is first, len(built) if "built" in globals() else "real")
"""


def environment(extensions, timeout=None):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), KMEANS_TRANSFORMER_CPU_KERNELS="1")
    env.pop("KMEANS_TRANSFORMER_BUILD_TIMEOUT", None)
    if timeout is not None:
        env["KMEANS_TRANSFORMER_BUILD_TIMEOUT"] = str(timeout)
    return env


def run_python(script, extensions, timeout=None, limit=HANG):
    """Run `script` in a fresh interpreter; a hang past `limit` seconds fails the test (the bug this file guards)."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", LOAD_MODULE + script], env=environment(extensions, timeout), capture_output=True, text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the loader hung for more than {limit} s; stderr: {expired.stderr!r}")
    assert result.returncode == 0, result.stderr
    return result, time.monotonic() - started


def warnings_of(result):
    return [line for line in result.stdout.splitlines() if line.startswith("WARNING")]


def test_a_stale_torch_lock_is_cleared_and_the_build_goes_on(tmp_path):
    directory = tmp_path / NAME
    directory.mkdir()
    (directory / "lock").touch()  # what a build killed between torch's try_acquire and release leaves behind
    result, _ = run_python(STUBS + LOAD_TWICE, tmp_path)
    assert "RESULT True True 1" in result.stdout  # built once (stub), loaded, cached for the second call
    assert warnings_of(result) == []
    assert not (directory / "lock").exists()
    assert result.stderr.count("removed a stale build lock") == 1
    assert result.stderr.count("building the compiled CPU kernels") == 1  # the one-line notice of the first build


def test_a_built_extension_loads_without_the_build_notice(tmp_path):
    directory = tmp_path / NAME
    directory.mkdir()
    (directory / f"{NAME}.so").touch()  # present: only torch's up-to-date check runs (stubbed here)
    result, _ = run_python(STUBS + LOAD_TWICE, tmp_path)
    assert "RESULT True True 1" in result.stdout
    assert "building the compiled CPU kernels" not in result.stderr
    assert "stale" not in result.stderr


def test_a_live_build_is_waited_for_at_most_the_timeout_then_the_fallback_warns_once(tmp_path):
    directory = tmp_path / NAME
    directory.mkdir()
    with open(directory / cpu_kernels._LOCK_NAME, "a") as handle:  # another process of ours building
        fcntl.flock(handle, fcntl.LOCK_EX)
        result, elapsed = run_python(STUBS + LOAD_TWICE, tmp_path, timeout=2)
    assert "RESULT False True 0" in result.stdout  # nothing built, the PyTorch code stands in, and stays
    (warning,) = warnings_of(result)
    assert warning.startswith("WARNING RuntimeWarning") and "were not ready within 2 s" in warning
    assert "another process is building them" in warning and "KMEANS_TRANSFORMER_BUILD_TIMEOUT" in warning
    assert elapsed < HANG / 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the owner of torch's lock is found through /proc")
def test_a_torch_lock_held_by_a_live_process_is_left_alone(tmp_path):
    """A builder that does not take our lock (an older kmeans_transformer sharing the directory) is not cut short."""
    directory = tmp_path / NAME
    directory.mkdir()
    lock = directory / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result, _ = run_python(STUBS + LOAD_TWICE, tmp_path, timeout=2)
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert "RESULT False True 0" in result.stdout
    (warning,) = warnings_of(result)
    assert "were not ready within 2 s" in warning and "does not take our lock" in warning


@pytest.mark.parametrize("value", ["", "30", "0.5"])
def test_the_timeout_is_read_from_the_environment(monkeypatch, value):
    monkeypatch.setenv("KMEANS_TRANSFORMER_BUILD_TIMEOUT", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernels._build_timeout() == (float(value) if value else 600.0)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_an_unusable_timeout_warns_and_waits_the_default(monkeypatch, value):
    monkeypatch.setenv("KMEANS_TRANSFORMER_BUILD_TIMEOUT", value)
    with pytest.warns(RuntimeWarning, match="not a positive number of seconds"):
        assert cpu_kernels._build_timeout() == 600.0


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs a virtual environment to reach through a link")
def test_an_environment_reached_through_a_symbolic_link_keeps_its_own_build(tmp_path):
    """torch writes its header and library paths into the build file as the process sees them, so the same environment
    reached through a symbolic link gives another build file: the two routes need two build names, else each use
    rebuilds over the other's build (a minute each time)."""
    link = tmp_path / "environment"
    link.symlink_to(sys.prefix, target_is_directory=True)
    script = "from torch.utils.cpp_extension import include_paths\nprint('RESULT', cpu_kernels._build_tag(), *include_paths())\n"
    seen = []
    for python in (Path(sys.executable), link / "bin" / Path(sys.executable).name):
        result = subprocess.run([str(python), "-c", LOAD_MODULE + script], capture_output=True, text=True, timeout=HANG)
        assert result.returncode == 0, result.stderr
        tag, *paths = next(line for line in result.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
        seen.append((tag, paths))
    (direct_tag, direct_paths), (linked_tag, linked_paths) = seen
    if direct_paths == linked_paths:
        pytest.skip("this Python resolves the link: torch names the same paths on both routes")
    assert any(str(link) in path for path in linked_paths)
    assert direct_tag != linked_tag


@pytest.mark.slow
def test_a_build_killed_half_way_does_not_block_the_next_process(tmp_path):
    """A real build, killed with SIGKILL while it compiles: the next process builds (a minute or two) and runs."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    directory = tmp_path / NAME
    builder = subprocess.Popen(
        [sys.executable, "-c", LOAD_MODULE + "cpu_kernels._load()"],
        env=environment(tmp_path), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + HANG
        while not ((directory / "lock").exists() and (directory / "main.cpp").exists()):  # torch's build has begun
            assert builder.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        time.sleep(3)  # the compiler is running
    finally:
        os.killpg(builder.pid, signal.SIGKILL)  # the interpreter, ninja and the compiler at once
        builder.wait()
    assert (directory / "lock").exists(), "the killed build must leave torch's lock behind for this test to mean anything"
    script = LOAD_TWICE + textwrap.dedent("""
        import torch
        query, key = torch.randn(1, 100, 3, dtype=torch.float64), torch.randn(1, 7, 3, dtype=torch.float64)
        expected = torch.einsum("gne,gke->gnk", query, key).argmax(-1)
        print("LABELS", torch.equal(cpu_kernels.nearest_keys(query, key, block_rows=64), expected))
    """)
    result, elapsed = run_python(script, tmp_path, limit=HANG + 600)
    print(f"build after a killed build: {elapsed:.0f} s")
    assert "RESULT True True real" in result.stdout and "LABELS True" in result.stdout
    assert warnings_of(result) == []
    assert result.stderr.count("removed a stale build lock") == 1
    assert not (directory / "lock").exists()


@pytest.mark.slow
def test_two_environments_used_in_turn_build_once_each(tmp_path):
    """Two toolchains (here two C++ compiler wrappers, as two virtual environments or two compilers would differ) used
    alternately on one machine each build the loops once; later uses load their own build, never rebuilding."""
    compiler = shutil.which(os.environ.get("CXX") or "c++")
    if compiler is None or shutil.which("ninja", path=os.path.dirname(sys.executable)) is None and not shutil.which("ninja"):
        pytest.skip("needs a C++ compiler and ninja")
    wrappers = []
    for name in ("first", "second"):
        wrapper = tmp_path / name / "c++"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {compiler} "$@"\n')
        wrapper.chmod(0o755)
        wrappers.append(wrapper)
    extensions = tmp_path / "extensions"
    script = "module = cpu_kernels._load()\nprint('RESULT', module is not None, module.__file__ if module else '')\n"
    libraries, notices = [], []
    for wrapper in wrappers * 2:
        env = dict(environment(extensions), CXX=str(wrapper))
        result = subprocess.run([sys.executable, "-c", LOAD_MODULE + script], env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0 and "RESULT True" in result.stdout, result.stderr
        library = Path(result.stdout.split("RESULT True ")[1].strip())
        libraries.append((library, library.stat().st_mtime_ns))
        notices.append(result.stderr.count("building the compiled CPU kernels"))
    assert notices == [1, 1, 0, 0]
    assert libraries[0][0] != libraries[1][0]  # one build per toolchain
    assert libraries[2] == libraries[0] and libraries[3] == libraries[1]  # loaded again, not rebuilt


@pytest.mark.slow
def test_the_loops_compile_for_an_avx512_cpu(tmp_path):
    """
    The loops' AVX-512 code (64-byte vectors of 16 float32 or 8 float64 rows, chosen by the compiler's own target
    macros) is never run on an AVX2 machine: it still compiles, with the build's own flags for an AVX-512 CPU
    (`-march=skylake-avx512` in place of `-march=native`), and the object uses 512-bit registers.
    """
    import sysconfig

    import torch.utils.cpp_extension as cpp

    compiler = shutil.which(os.environ.get("CXX") or "c++")
    if compiler is None:
        pytest.skip("needs a C++ compiler")
    source = tmp_path / "loops.cpp"
    source.write_text("#include <torch/extension.h>\n" + cpu_kernels._SOURCE)
    flags = [flag if not flag.startswith("-march=") else "-march=skylake-avx512" for flag in cpu_kernels._CFLAGS]
    includes = [f"-isystem{path}" for path in [*cpp.include_paths(), sysconfig.get_path("include")]]
    command = [compiler, "-DTORCH_EXTENSION_NAME=avx512_check", "-DTORCH_API_INCLUDE_EXTENSION_H", *includes,
               "-fPIC", "-std=c++20", *flags, "-c", str(source), "-o", str(tmp_path / "loops.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    objdump = shutil.which("objdump")
    if objdump is not None:
        disassembly = subprocess.run([objdump, "-d", str(tmp_path / "loops.o")], capture_output=True, text=True)
        assert "zmm" in disassembly.stdout
