#!/usr/bin/env bash
# The GPU comparison in one run, from the repository root of a CUDA 12 machine with Python 3.11 and a package index:
#
#   bash benchmarks/gpu_check.sh            # results in ./gpu-results
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# 1. a virtual environment with torch (the CUDA 12 wheels of PyPI, in pyproject.toml's range), the project and its
#    test and benchmark extras;
# 2. the GPU peers, each optional (a failed install prints a line and the run goes on; speed.py then reports the
#    library unavailable): cuML from NVIDIA's index, faiss-gpu, both constrained to the versions already installed;
# 3. benchmarks/speed.py --device cuda on the cases of the GPU targets (n = 1e7, d = 128, k = 1024 and the two
#    batches of small problems) into $OUT/speed-targets;
# 4. tests/test_conformance.py, slow tests included;
# 5. benchmarks/speed.py --device cuda on the five single problems of the grid into $OUT/speed.
# speed.py runs 3 timed runs per measurement (fewer once one has spent 10 s) and rewrites its report after every
# case, so a run cut short by its time limit keeps the cases it finished.
#
# Every step has a time limit (`timeout`), and together they stay within TOTAL_S seconds (default 540): a step gets
# at most what is left. Each step's output is saved under $OUT/logs; $OUT/summary.txt lists the steps' exit statuses.
set -euo pipefail

OUT=${OUT:-./gpu-results}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv-gpu}
TOTAL_S=${TOTAL_S:-540}
START=$SECONDS

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/summary.txt"

# step NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT_S, time left), its output to the terminal and to
# $OUT/logs/NAME.log; record its exit status and return it.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_S - (SECONDS - START)))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        echo "== $name: skipped, no time left" | tee -a "$OUT/summary.txt"
        return 124
    fi
    echo "== $name (limit ${limit} s): $*"
    local status
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    echo "== $name: exit status $status after $((SECONDS - START)) s in all" | tee -a "$OUT/summary.txt"
    return "$status"
}

nvidia-smi > "$OUT/logs/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/logs/nvidia-smi.txt"

# Setup: torch, the project and the tools of speed.py are required; the GPU peers are not.
step venv 60 "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off)
step torch 150 "${PIP[@]}" "torch>=2.4,<3"
step project 90 "${PIP[@]}" -e ".[test]" fast-pytorch-kmeans torch-kmeans  # not [bench]: its faiss-cpu
# The peers may not move what is installed (torch's CUDA libraries): a peer that needs other versions fails alone.
"$VENV/bin/python" -m pip freeze --exclude-editable > "$OUT/logs/constraints.txt"
step cuml 120 "${PIP[@]}" -c "$OUT/logs/constraints.txt" --extra-index-url=https://pypi.nvidia.com cuml-cu12 \
    || echo "cuML not installed: speed.py will report it unavailable"
step faiss-gpu 60 "${PIP[@]}" -c "$OUT/logs/constraints.txt" faiss-gpu-cu12 \
    || echo "faiss-gpu not installed: speed.py will report faiss and faiss-gpu unavailable"
"$VENV/bin/python" -m pip freeze > "$OUT/logs/pip-freeze.txt" 2>&1 || true

# Measurements and tests: a failing step is recorded and the next one still runs.
status=0
SPEED=("$VENV/bin/python" benchmarks/speed.py --device cuda --repeats 3 --time-budget 10 --overwrite)
step speed-targets 180 "${SPEED[@]}" --gpu-large \
    --cases n10000000_d128_k1024 B1000_n200_d2_k4 B256_n1024_d32_k16 --output-dir "$OUT/speed-targets" || status=1
step conformance 90 "$VENV/bin/python" -m pytest -q tests/test_conformance.py -m "slow or not slow" || status=1
step speed-grid 150 "${SPEED[@]}" --no-memory \
    --cases n100000_d2_k8 n100000_d32_k64 n200000_d64_k256 n50000_d128_k1024 n1000000_d16_k32 \
    --output-dir "$OUT/speed" || status=1

echo "done in $((SECONDS - START)) s; results in $OUT (summary.txt, logs/, speed-targets/, speed/)"
exit "$status"
