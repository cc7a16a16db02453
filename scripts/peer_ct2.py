"""CTranslate2 peer for `cogkit bench serve --peer ct2` (runs in .peers/ct2; see peers-setup.sh).

argv: HF_FOLDER QUANTIZATION CONCURRENCY REQUESTS MAX_NEW; stdin: JSON list of prompt id lists.
Converts HF_FOLDER once (cached beside it), then runs the requests greedily in batches of
CONCURRENCY with `generate_batch`; prints one JSON line with the aggregate tok/s.
"""

import json
import os
import sys
import time
from pathlib import Path

import ctranslate2

hf, quant, concurrency, requests, max_new = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
prompt_ids = json.loads(sys.stdin.read())
out = Path(hf + f"-ct2-{quant}")
if not out.is_dir():
    import transformers

    # CTranslate2 4.6 reads transformers 4's config (`rope_theta`, `rope_scaling` None for plain
    # rope); transformers 5 folds both into `rope_parameters`. Hand it the old form.
    load = transformers.LlamaForCausalLM.from_pretrained

    def old_style(*args, **kwargs):
        model = load(*args, **kwargs)
        theta = model.config.rope_parameters["rope_theta"]
        model.config.rope_scaling = None
        model.config.rope_theta = theta
        return model

    transformers.LlamaForCausalLM.from_pretrained = old_style
    ctranslate2.converters.TransformersConverter(hf).convert(str(out), quantization=quant)
vocab = json.loads((Path(hf) / "tokenizer.json").read_text())["model"]["vocab"]
token_of = {i: t for t, i in vocab.items()}
threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
generator = ctranslate2.Generator(str(out), device="cpu", compute_type=quant, intra_threads=threads)
generator.generate_batch([[token_of[i] for i in prompt_ids[0]]], max_length=4, sampling_topk=1)  # warm
tokens, texts, started = 0, [], time.perf_counter()
for start in range(0, requests, concurrency):
    batch = [[token_of[i] for i in ids] for ids in prompt_ids[start:start + concurrency]]
    results = generator.generate_batch(batch, max_length=max_new, sampling_topk=1,
                                       include_prompt_in_result=False)
    for r in results:
        tokens += len(r.sequences_ids[0])
        texts.append(r.sequences_ids[0])
wall = time.perf_counter() - started
print(json.dumps({"engine": f"ctranslate2 {ctranslate2.__version__} {quant}", "concurrency": concurrency,
                  "requests": requests, "output_tokens": tokens, "wall_seconds": round(wall, 3),
                  "aggregate_tokens_per_second": round(tokens / wall, 2), "token_ids": texts}))
