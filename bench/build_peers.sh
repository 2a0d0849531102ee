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
  cmake -S "$PEERS/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$PEERS/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  cmake --build "$PEERS/build" --target llama-server -j "${JOBS:-2}"
fi
.venv/bin/pip install --quiet sse-starlette starlette-context pydantic-settings
echo "peers ready: $PEERS/build/bin/llama-server, .venv/bin/python -m llama_cpp.server"
