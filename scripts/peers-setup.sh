#!/usr/bin/env bash
# Peer engines for `cogkit bench serve --peer ...`, each under .peers/ (never in the runtime
# requirements).
#   bash scripts/peers-setup.sh            CTranslate2 in its own venv (its converter borrows
#                                          transformers and torch from ./.venv)
#   bash scripts/peers-setup.sh llamacpp   also llama.cpp's llama-server and llama-quantize, compiled
#                                          from the source inside llama-cpp-python's sdist on PyPI
#                                          (~8 minutes on 2 cores; cmake and a C++ compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .peers/ct2
.peers/ct2/bin/pip install -q "ctranslate2==4.8.5" "numpy<3" "safetensors"
echo "ct2 peer ready: .peers/ct2"

if [[ "${1:-}" == "llamacpp" ]]; then
  LLAMA_CPP_PYTHON=0.3.36  # vendors the llama.cpp it was released with
  src=.peers/llamacpp/src
  if [[ ! -f "$src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/CMakeLists.txt" ]]; then
    mkdir -p "$src"
    .peers/ct2/bin/pip download -q --no-deps --no-binary :all: -d "$src" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar xzf "$src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$src"
  fi
  llama="$src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  # Tuned for this CPU (GGML_NATIVE), but without AMX: on these VMs the CPU lists amx_int8, yet
  # ggml's AMX kernels die with SIGILL (illegal instruction) on a Q8_0 model.
  no_amx=""
  if [[ "$(uname -m)" == x86_64 ]]; then no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
  cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    "-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx" > .peers/llamacpp/build.log 2>&1
  echo "compiling llama.cpp (log: .peers/llamacpp/build.log)"
  if ! cmake --build "$llama/build" -j "$(nproc)" --target llama-server llama-quantize >> .peers/llamacpp/build.log 2>&1; then
    tail -30 .peers/llamacpp/build.log
    exit 1
  fi
  mkdir -p .peers/llamacpp/bin
  cp "$llama/build/bin/llama-server" "$llama/build/bin/llama-quantize" .peers/llamacpp/bin/
  echo "llamacpp peer ready: .peers/llamacpp/bin ($(.peers/llamacpp/bin/llama-server --version 2>&1 | grep -m1 version))"
fi
