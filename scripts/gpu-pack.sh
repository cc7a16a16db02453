#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on the lent GPU machine into .gpu/ (git-ignored), here, where
# PyPI is reachable. That machine reaches nothing: its python3 has torch (CUDA), tokenizers,
# safetensors, onnx, transformers... but not Cog's server or gguf, and no weights. A call sends at
# most 64 MiB, and SmolLM2's source file is 94 MiB, so the weights travel in two parts, one per call:
#
#   .gpu/whl/      cog, coglet, structlog, gguf (pure Python or abi3: any Python 3.10+)
#   .gpu/part1/    the first half of SmolLM2-135M-Instruct.Q4_1.gguf, and its sha256
#   .gpu/part2/    the second half
#
# Then, with the `device` tool (two calls back to back; the machine keeps what a call left for 30 s):
#   run  carry=[".gpu/whl", ".gpu/part1"]  command="bash scripts/gpu-check.sh"
#   run  carry=[".gpu/whl", ".gpu/part2"]  command="bash scripts/gpu-check.sh"  timeout_s=600
# (a rehearsal here took ~40 s for the second; on the GPU, compiling adds a minute or two per model)
# The first call stages its part and checks the machine (CUDA, the wheels, cogkit's imports); the
# second joins the parts and runs every assertion. Rehearse both here on CPU first:
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh   (here: both parts at once; for the two calls,
#   run it twice in a copy of the repo holding one part at a time, with PY= a venv of the device's packages)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/whl .gpu/part1 .gpu/part2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  cog==0.23.1 coglet==0.23.1 structlog==26.1.0 gguf==0.19.0
GGUF=$(.venv/bin/python -c "
from cogkit.sources import resolve
from models.llm.build import DEFAULT_SOURCE
print(resolve(DEFAULT_SOURCE)[0])")
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/part1/gguf.sha256
cp .gpu/part1/gguf.sha256 .gpu/part2/gguf.sha256
half=$(( ($(stat -c %s "$GGUF") + 1) / 2 ))
head -c "$half" "$GGUF" > .gpu/part1/gguf.1
tail -c +"$((half + 1))" "$GGUF" > .gpu/part2/gguf.2
du -sh .gpu/whl .gpu/part1 .gpu/part2
