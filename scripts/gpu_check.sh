#!/usr/bin/env bash
# The whole GPU job in one call, for the GPU machine (no network; torch, triton, ninja, pytest,
# hypothesis and matplotlib preinstalled):
#   scripts/gpu_check.sh OUT_DIR [bench args...]
# builds the CUDA extension, runs the whole test suite on CUDA, `cvkernels check` and
# `cvkernels bench`, and writes logs, CSVs and plots under OUT_DIR (at most 8 files, so the
# device tool brings them all back). Exit status: non-zero if the build, tests or check failed.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [bench args...]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${CVK_CUDA_ARCHS:-9.0}} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export CVK_BUILD_CUDA=${CVK_BUILD_CUDA:-auto}

{ echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; nvidia-smi -L 2>/dev/null; } > "$OUT/build.log"
if ! $PY -m pip install --no-deps --no-build-isolation -e . >> "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
status=0
{ $PY -m cvkernels info; echo; $PY -m cvkernels check; } > "$OUT/check.txt" 2>&1 || status=1
tail -25 "$OUT/check.txt"
$PY -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"
# the full BN table is ~216 cases (torch.compile recompiles each): one device call fits --quick;
# pass e.g. `--dtype bf16 --filter " 256x" --max-seconds 400` for more
[ $# -eq 0 ] && set -- --quick
$PY -m cvkernels bench --out "$OUT" "$@" > "$OUT/bench.log" 2>&1 || status=1
tail -30 "$OUT/bench.log"
exit $status
