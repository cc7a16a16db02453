"""The Python half of scripts/gpu-check.sh: each check prints what it measured and asserts.

  python scripts/gpu_check.py machine DEVICE
  python scripts/gpu_check.py text DEVICE RUNTIME_FOLDER FLOAT32_FOLDER   (torch bf16 build; float32 reference)
  python scripts/gpu_check.py ct2 DEVICE CT2_FOLDER
  python scripts/gpu_check.py serve DEVICE BENCH_JSON

In bfloat16 a product's rounding depends on the kernel, and the kernel on the shapes: the same row
alone, in a batch, eager or compiled, may round differently, and a near-tie between two tokens then
flips and the rest of the text follows another path. So the text check has two parts: the GPU model,
fed the float32 CPU model's greedy text, picks the same next token at nearly every position (the
function is right), and where greedy text batched and compiled parts from the text alone, it parts
at a near-tie (the two tokens' logits less than 1.0 apart).
"""

import sys
import threading
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Explain gravity.", "Count to ten."]
NEW_TOKENS = 48


def machine(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: nothing to check (GPU_CHECK_DEVICE=cpu rehearses the script on CPU)")
    name = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, device {device}{name}")
    import cog, coglet, gguf, safetensors, tokenizers  # noqa: F401  what the server and build-weights import
    import cogkit.cli, models.llm.build, models.llm.text_generation  # noqa: F401
    print("imports: OK")


def greedy_ids(gen, prompt: str) -> list[int]:
    from models.llm.text_generation import GenerationStats, Sampling

    stats = GenerationStats()
    for _ in gen.generate(gen.encode(gen.format_prompt(prompt, None)),
                          Sampling(max_new_tokens=NEW_TOKENS, temperature=0), [], stats):
        pass
    # the end-of-text token too (the stats leave it out): a text that ends where another goes on parts there
    return stats.token_ids + ([min(gen.eos_ids)] if stats.stop_reason == "eos" else [])


def concurrently(gen, prompts: list[str]) -> list[list[int]]:
    out = [None] * len(prompts)
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, greedy_ids(gen, prompts[i])))
               for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out


def forced_logits(gen, prompt: str, ids: list[int]):
    """The model's logits after the prompt and after each of `ids` (eager, one forward): [len(ids) + 1, vocab]."""
    import torch

    prompt_ids = gen.encode(gen.format_prompt(prompt, None))
    tokens = prompt_ids + ids
    model = gen.model
    model.setup_cache(len(tokens), slots=1)
    with torch.inference_mode():
        x = torch.tensor([tokens], device=model.device)
        return model(x, torch.arange(len(tokens), device=model.device)[None], all_logits=True)[0, len(prompt_ids) - 1:].float()


def teacher_forced_agreement(gen, prompt: str, ids: list[int]) -> int:
    """How many of `ids` the model picks itself when fed the prompt and the ids before each."""
    picked = forced_logits(gen, prompt, ids)[:-1].argmax(-1).tolist()
    return sum(a == b for a, b in zip(picked, ids))


def split_margin(gen, prompt: str, a: list[int], b: list[int]) -> float | None:
    """Where two greedy texts of one prompt part, how far apart the model's logits for their two
    tokens are (None: the same text). A few tenths is a near-tie that rounding decides."""
    j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if j is None:  # one text is the other's start: the same up to a length limit
        return None
    logits = forced_logits(gen, prompt, a[:j])[-1]
    return float((logits[a[j]] - logits[b[j]]).abs())


def text(device: str, folder: Path, float32_folder: Path) -> None:
    from models.llm.build import compile_enabled
    from models.llm.text_generation import TextGenerator

    reference = TextGenerator(float32_folder, "cpu", max_batch=1)
    want = [greedy_ids(reference, p) for p in PROMPTS]
    print("float32 on CPU:", repr(reference.tokenizer.decode(want[0])))
    alone = TextGenerator(folder, device, max_batch=1)
    agree = [teacher_forced_agreement(alone, p, ids) for p, ids in zip(PROMPTS, want)]
    same, total = sum(agree), sum(map(len, want))
    print(f"{alone.model.dtype} on {device}, fed float32's text: the same next token at {same}/{total} positions")
    assert same >= 0.9 * total, agree

    compiled = compile_enabled(device)  # as the predictor does: on a GPU (on CPU its forwards run on onnxruntime)
    if compiled:
        alone.compile_decode()
    alone_ids = [greedy_ids(alone, p) for p in PROMPTS]
    batched = TextGenerator(folder, device, max_batch=8)
    if compiled:
        batched.compile_decode()
    batched_ids = concurrently(batched, PROMPTS)
    margins = [split_margin(alone, p, a, b) for p, a, b in zip(PROMPTS, alone_ids, batched_ids)]
    parted = [m for m in margins if m is not None]
    print(f"{'compiled' if compiled else 'eager'} greedy text, batched == alone: {len(PROMPTS) - len(parted)}/"
          f"{len(PROMPTS)} (batch sizes up to {max(batched.engine.batch_sizes)}); where they part, the two "
          f"tokens' logits differ by {[round(m, 3) for m in parted]}; alone: {alone.tokenizer.decode(alone_ids[0])!r}")
    assert max(batched.engine.batch_sizes) > 1
    assert all(m < 1.0 for m in parted), [alone.tokenizer.decode(t) for t in alone_ids + batched_ids]


def ct2(device: str, folder: Path) -> None:
    from models.llm.text_generation import TextGenerator

    gen = TextGenerator(folder, device, max_batch=8)
    want = [greedy_ids(gen, p) for p in PROMPTS]
    got = concurrently(gen, PROMPTS)
    print(f"CTranslate2 on {device}: batched == alone {sum(a == b for a, b in zip(want, got))}/{len(PROMPTS)}; "
          f"{gen.tokenizer.decode(want[0])!r}")
    assert max(gen.engine.batch_sizes) > 1 and all(want)


def serve(device: str, bench_json: Path) -> None:
    import json

    levels = {lv["concurrency"]: lv for lv in json.loads(bench_json.read_text())["levels"]}
    one, eight = levels[1]["aggregate_tokens_per_second"], levels[8]["aggregate_tokens_per_second"]
    print(f"8 streams over 1: {eight / one:.2f}x ({eight} / {one} tok/s)")
    if device == "cuda":  # the figure; a CPU rehearsal is capped lower (see the README)
        assert eight >= 5 * one, "8 streams make less than 5x one stream's tokens per second"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    check, device, *paths = sys.argv[1:]
    {"machine": machine, "text": text, "ct2": ct2, "serve": serve}[check](device, *map(Path, paths))
