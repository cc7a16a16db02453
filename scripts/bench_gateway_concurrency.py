"""Aggregate output tokens/s through `cogkit gateway` with N concurrent clients, the gateway feeding
the LLM server up to its concurrency (the overlay's concurrency.max) against one at a time
(COG_MAX_CONCURRENCY=1), interleaved rounds, medians and their ratio.

    .venv/bin/python scripts/bench_gateway_concurrency.py --clients 8 --tokens 64 --rounds 2

Uses the built weights in ./weights (or COGKIT_WEIGHTS_DIR); greedy, so every variant must return
the same text per prompt, which is checked.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import replicate
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cogkit.server import free_port  # noqa: E402

TOKEN = "r8_bench"
PROMPTS = ["Write a short story about a fox.", "Explain what a compiler does.", "Describe the sea at night.",
           "List some uses of copper.", "Why is the sky blue?", "Tell me about the moon.",
           "How do bees make honey?", "What is a good breakfast?"]


def start_gateway(data: Path, concurrency: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("COG_MAX_CONCURRENCY", None)
    if concurrency:
        env["COG_MAX_CONCURRENCY"] = concurrency
    proc = subprocess.Popen([sys.executable, "-m", "cogkit.cli", "gateway", "--data", str(data), "--token", TOKEN,
                             "--port", str(port), "--models", "llm"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("the gateway did not start")


def one_round(url: str, clients: int, tokens: int) -> tuple[float, dict]:
    client = replicate.Client(base_url=url, api_token=TOKEN)
    client.run("local/llm", input={"prompt": "Hi", "max_new_tokens": 2, "temperature": 0})  # boot the server
    texts, counts, errors = {}, [], []

    def ask(i: int):
        c = replicate.Client(base_url=url, api_token=TOKEN)
        try:
            p = c.models.predictions.create(model="local/llm", input={
                "prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": tokens, "temperature": 0}, wait=60)
            p.wait()
            texts[i] = "".join(p.output)
            counts.append(p.metrics["output_token_count"])
        except Exception as e:  # reported below
            errors.append(repr(e))

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(f"errors: {errors}")
    return sum(counts) / elapsed, texts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    variants = {"overlay concurrency": None, "one at a time": "1"}
    rates = {name: [] for name in variants}
    texts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, concurrency in variants.items():
                proc, url = start_gateway(Path(tmp) / f"{name}-{r}".replace(" ", "-"), concurrency)
                try:
                    rate, got = one_round(url, args.clients, args.tokens)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
                rates[name].append(rate)
                texts.setdefault(name, got)
                print(f"round {r + 1} {name}: {rate:.1f} output tok/s", flush=True)
    same = texts["overlay concurrency"] == texts["one at a time"]
    medians = {name: statistics.median(v) for name, v in rates.items()}
    for name, m in medians.items():
        print(f"{name}: median {m:.1f} output tok/s over {args.rounds} rounds")
    print(f"ratio: {medians['overlay concurrency'] / medians['one at a time']:.2f}x; "
          f"greedy texts identical per prompt: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
