"""Quality cost of a quantized LLM build against the float32 one: perplexity on a fixed text and
greedy agreement (tokens identical to float32's before the first difference, and whole answers equal).

usage: .venv/bin/python scripts/llm_quality.py WEIGHTS_FP32_FOLDER WEIGHTS_OTHER_FOLDER [--onnxruntime] [--json FILE]
(either folder may be a torch or a ctranslate2 build; --onnxruntime runs the other torch build's
forwards on onnxruntime's graph, as the server does once it is built: models/llm/ort_forward.py)
"""

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator  # noqa: E402

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
        "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
        "to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece of the 1889 "
        "World's Fair, and to crown the centennial anniversary of the French Revolution. Although "
        "initially criticised by some of France's leading artists and intellectuals for its design, it "
        "has since become a global cultural icon of France and one of the most recognisable structures "
        "in the world. The tower received 5,889,000 visitors in 2022.")
PROMPTS = ["What is the capital of France?", "Write a short story about a fox.", "Explain what a compiler does.",
           "List three facts about Paris.", "Describe the water cycle.", "Why is the sky blue?",
           "Give me a recipe for pancakes.", "What is machine learning?"]


@torch.inference_mode()
def perplexity(gen: TextGenerator) -> float:
    ids = gen.encode(TEXT)
    if gen.engine_name == "ctranslate2":  # CTranslate2 scores the same next-token log-probabilities
        engine = gen.engine
        log_probs = engine.generator.score_batch([[engine.vocab[i] for i in ids]])[0].log_probs
        return math.exp(-sum(log_probs) / len(log_probs))
    gen.model.setup_cache(len(ids))
    if gen.model.ort_forward is not None:  # the graph gives each call's last logits: one token a call
        logits = torch.cat([gen.model.ort_forward(torch.tensor([[t]]), [i + 1]) for i, t in enumerate(ids[:-1])])
        return math.exp(float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]))))
    logits = gen.model(torch.tensor([ids]), torch.arange(len(ids))[None], all_logits=True)[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[1:]))
    return math.exp(float(nll))


def greedy(gen: TextGenerator, n: int = 48) -> list[list[int]]:
    out = []
    for p in PROMPTS:
        stats = GenerationStats()
        list(gen.generate(gen.encode(gen.format_prompt(p, None)), Sampling(max_new_tokens=n, temperature=0), [], stats))
        out.append(stats.token_ids)
    return out


def main() -> None:
    torch.set_num_threads(1)
    ref, other = TextGenerator(Path(sys.argv[1])), TextGenerator(Path(sys.argv[2]))
    if "--onnxruntime" in sys.argv:
        other.forward_on_onnxruntime().join()
        assert other.model.ort_forward is not None, "onnxruntime's graph did not build (see the setup line)"
    a, b = greedy(ref), greedy(other)
    common = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), min(len(s), len(t))) for s, t in zip(a, b)]
    result = {"perplexity_reference": round(perplexity(ref), 3), "perplexity_other": round(perplexity(other), 3),
              "greedy_tokens_before_first_difference": common,
              "greedy_prefix_agreement": round(sum(common) / sum(len(s) for s in a), 3),
              "greedy_answers_identical": f"{sum(s == t for s, t in zip(a, b))}/{len(a)}"}
    print(json.dumps(result))
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
