#!/usr/bin/env bash
# The GPU check for maintainers (issue 17), in one command on a machine with CUDA:
#     tools/gpu_check.sh [SECONDS]        (or: ./course test --gpu [SECONDS]; default 480)
# 1. every notebook and solution on CUDA under nbval, failing on errors only (--nbval-lax: the
#    committed outputs are CPU outputs), each notebook given at most 120 s;
# 2. the test suite with COURSE_DEVICE=cuda (browser and style tests left out: no Chromium, and
#    ruff does not depend on the device).
# Both use pytest-xdist (--dist loadgroup, as ./course test: a notebook's cells, and the tests
# that share one class run or one torchrun job, stay on one worker; conftest.py). Results are
# written as they come, under $OUT (default ./gpu_check): *.log (pytest -v: one line per cell and
# per test), *.progress.jsonl (a line when each notebook starts and ends, and per test), and
# summary.txt at the end, so a run cut off at its time limit still says which notebook hung.
# Works offline where PyTorch is installed: it installs nothing (README: "Running the course on a GPU").
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PY=${COURSE_PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda}  # cpu: only to try this script itself on a machine without a GPU
read -r -a notebooks <<<"${GPU_CHECK_NOTEBOOKS:-notebooks solutions}"
read -r -a tests <<<"${GPU_CHECK_TESTS:-tests}"
OUT=${OUT:-$PWD/gpu_check}
budget=${1:-480}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cpus=$(nproc)
workers=$(( cpus > 16 ? 14 : (cpus > 3 ? cpus - 2 : 1) ))
notebook_budget=$(( budget * 2 / 5 ))
started=$SECONDS

echo "gpu_check: results under $OUT ($workers workers, ${budget} s in all)"
if ! GPU_CHECK_DEVICE=$device "$PY" - >"$OUT/environment.txt" 2>&1 <<'PYCHECK'; then
import importlib.util, os, platform, sys
missing = [m for m in ("torch", "numpy", "nbval", "nbformat", "nbclient", "jupyter_client",
                       "ipykernel", "IPython", "ipywidgets", "matplotlib", "safetensors", "onnx",
                       "onnxruntime", "onnxscript", "tqdm", "pytest", "xdist", "pytest_timeout")
           if importlib.util.find_spec(m) is None]
print("python", platform.python_version(), sys.executable)
if "torch" not in missing:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count())
    elif os.environ["GPU_CHECK_DEVICE"] == "cuda":
        print("NO CUDA: this check is for a machine with a GPU")
        raise SystemExit(3)
if "pytest" not in missing:
    import pytest  # pyproject's addopts use --disable-plugin-autoload (pytest 8.4)
    if tuple(int(p) for p in pytest.__version__.split(".")[:2]) < (8, 4):
        missing.append(f"pytest>=8.4 (found {pytest.__version__})")
if missing:
    print("MISSING:", " ".join(missing), "(README.md, 'Running the course on a GPU', says how to install them offline)")
    raise SystemExit(3)
PYCHECK
    cat "$OUT/environment.txt"
    exit 3
fi
cat "$OUT/environment.txt"

run() {  # run NAME SECONDS PYTEST-ARGS...: one pytest run, cut off at SECONDS
    local name=$1 seconds=$2
    shift 2
    rm -f "$OUT/$name.progress.jsonl"
    echo "gpu_check: $name (at most $seconds s) -> $OUT/$name.log"
    COURSE_DEVICE=$device COURSE_PROGRESS_LOG="$OUT/$name.progress.jsonl" \
        timeout -k 15 "$seconds" "$PY" -m pytest -p no:cacheprovider -v -n "$workers" \
        --dist loadgroup "$@" >"$OUT/$name.log" 2>&1
    local status=$?
    [[ $status == 124 || $status == 137 ]] && echo "gpu_check: $name CUT OFF after $seconds s"
    echo "$status" >"$OUT/$name.exit"
    tail -n 3 "$OUT/$name.log"
}

run notebooks "$notebook_budget" --nbval-lax --timeout 120 "${notebooks[@]}"
remaining=$(( budget - (SECONDS - started) - 20 ))
(( remaining < 60 )) && remaining=60
run tests "$remaining" --timeout 240 "${tests[@]}" \
    --deselect tests/test_browser.py --deselect tests/test_style.py

"$PY" tools/gpu_check_summary.py "$OUT" "${notebooks[@]}" | tee "$OUT/summary.txt"
