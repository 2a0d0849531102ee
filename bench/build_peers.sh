#!/usr/bin/env bash
# Build the peers for benchmarking into bench/.peers/ (git-ignored; never committed):
#   llama-server  from the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (same kernels as the worker);
#   llama_cpp.server's extra dependencies, installed into .venv without rebuilding llama-cpp-python.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=bench/.peers
VERSION=0.3.36
mkdir -p "$PEERS"
if [ ! -x "$PEERS/build/bin/llama-server" ]; then
  if [ ! -d "$PEERS/llama_cpp_python-$VERSION" ]; then
    .venv/bin/pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$PEERS/"
    tar -xzf "$PEERS/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS/"
  fi
  # Same kernels as the worker: if install.sh had to build llama-cpp-python without AMX (a CPU that lists AMX
  # but faults on it), its libggml-cpu holds no tile instructions, and llama-server is built without them too.
  flags=""
  lib=$(ls .venv/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so* 2>/dev/null | head -1 || true)
  if [ -n "$lib" ] && grep -qw amx_tile /proc/cpuinfo && ! objdump -d "$lib" 2>/dev/null | grep -q tilezero; then
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  cmake -S "$PEERS/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$PEERS/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  cmake --build "$PEERS/build" --target llama-server -j "${JOBS:-2}"
fi
.venv/bin/pip install --quiet sse-starlette starlette-context pydantic-settings
echo "peers ready: $PEERS/build/bin/llama-server, .venv/bin/python -m llama_cpp.server"
