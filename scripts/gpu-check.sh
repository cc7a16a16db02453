#!/usr/bin/env bash
# GPU assertions for the LLM in one command (CPU CI never runs this). On a machine with CUDA:
# builds bf16 weights into a scratch root, then checks through the real server that greedy text is
# the same batched as alone, with the compiled forward (COGKIT_COMPILE=1), and prints serving numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
ROOT=$(mktemp -d)
COGKIT_WEIGHTS_DIR=$ROOT .venv/bin/cogkit build-weights llm --dtype bfloat16
export COGKIT_WEIGHTS_DIR=$ROOT COGKIT_COMPILE=1
$PY - <<'PY'
import threading
from pathlib import Path
import os
import torch
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator

folder = Path(os.environ["COGKIT_WEIGHTS_DIR"]) / "llm"
prompts = ["What is the capital of France?", "Write a haiku about rain.", "Explain gravity.", "Count to ten."]
alone = TextGenerator(folder, "cuda", max_batch=1)
want = []
for p in prompts:
    s = GenerationStats()
    want.append("".join(alone.generate(alone.encode(alone.format_prompt(p, None)), Sampling(max_new_tokens=48, temperature=0), [], s)))
assert "Paris" in want[0], want[0]
batched = TextGenerator(folder, "cuda", max_batch=8)
batched.compile_decode()
got = [None] * len(prompts)
def one(i):
    got[i] = "".join(batched.generate(batched.encode(batched.format_prompt(prompts[i], None)), Sampling(max_new_tokens=48, temperature=0), [], GenerationStats()))
ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
[t.start() for t in ts]; [t.join() for t in ts]
same = sum(a == b for a, b in zip(want, got))
print(f"GPU greedy batched == alone: {same}/{len(prompts)} (bf16; compiled batched forward)")
assert max(batched.engine.batch_sizes) > 1
assert same >= len(prompts) - 1, (want, got)  # bf16 batched matmuls may flip a near-tie
print("gpu-check: OK")
PY
# The CTranslate2 engine on the GPU: an int8 build runs as int8_float16, greedy batched == alone.
CT2_ROOT=$(mktemp -d)
COGKIT_WEIGHTS_DIR=$CT2_ROOT .venv/bin/cogkit build-weights llm --engine ctranslate2 --dtype int8
COGKIT_WEIGHTS_DIR=$CT2_ROOT $PY - <<'PY'
import os, threading
from pathlib import Path
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator

gen = TextGenerator(Path(os.environ["COGKIT_WEIGHTS_DIR"]) / "llm", "cuda", max_batch=8)
prompts = ["What is the capital of France?", "Write a haiku about rain.", "Explain gravity.", "Count to ten."]
def greedy(p):
    return "".join(gen.generate(gen.encode(gen.format_prompt(p, None)), Sampling(max_new_tokens=48, temperature=0), [], GenerationStats()))
want = [greedy(p) for p in prompts]
got = [None] * len(prompts)
ts = [threading.Thread(target=lambda i=i: got.__setitem__(i, greedy(prompts[i]))) for i in range(len(prompts))]
[t.start() for t in ts]; [t.join() for t in ts]
print(f"GPU CTranslate2 int8_float16: batched == alone {sum(a == b for a, b in zip(want, got))}/{len(prompts)}; {want[0]!r}")
assert max(gen.engine.batch_sizes) > 1 and all(want)
print("gpu-check ctranslate2: OK")
PY
PYTHONPATH=. .venv/bin/cogkit bench serve llm --concurrency 1,8,16 --requests 32 --max-new-tokens 64
