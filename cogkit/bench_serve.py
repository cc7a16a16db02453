"""`cogkit bench serve MODEL`: serving throughput through the real server, at several concurrencies.

For each concurrency c, c client threads stream `--requests` greedy predictions in total and we
report aggregate output tokens per second (all tokens / wall time), time to first token (p50, p95,
as the client sees it) and each stream's own decode tok/s.
`--peer ct2` runs the same prompt ids on CTranslate2 (`generate_batch`, batch = c) in the same run;
CTranslate2 lives in its own venv (scripts/peers-setup.sh), never in the runtime requirements.
`--peer llamacpp` starts llama.cpp's own server with c slots after each level and sends it the same
prompt ids over HTTP, c at a time (cogkit/peer_llamacpp.py).

Every request of a run gets a prompt of its own ("Request 17. Why is the sky blue?"): requests then
share only the chat template's system prompt and the user turn's first token with each other, as
different users' requests do, and the server's prefix cache cannot skip a whole prompt it has
already seen (CTranslate2 recomputes every prompt). `--repeat-prompts` sends the same 8 prompts over
and over instead, the case of clients retrying or repeating a request.

`--rounds N` runs every level N times, round by round (round 1 at each level, then round 2...), each
run cogkit then the peers on that run's prompts, and reports the median of the rounds and each round's
ratios: cogkit to each peer, and each level's aggregate to the first level's (8 streams over 1) in the
same round. On a shared machine whose speed moves by a third within minutes, one pair of runs decides
a ratio near 1 by chance, and levels measured one after the other compare different machines.
"""

import functools
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["Write a short story about a fox.", "Explain what a compiler does.",
           "List three facts about Paris.", "Describe the water cycle.", "Why is the sky blue?",
           "Give me a recipe for pancakes.", "What is machine learning?", "Tell me about the moon."]
PEER_PYTHON = Path(".peers/ct2/bin/python")


def add_bench_serve(bench, model_help: str) -> None:
    b = bench.add_parser("serve", help="aggregate tok/s, TTFT and per-stream tok/s at several concurrencies")
    b.add_argument("model", help=model_help)
    b.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels (default 1,4,8,16)")
    b.add_argument("--requests", type=int, default=16, help="predictions per level (default 16)")
    b.add_argument("--max-new-tokens", type=int, default=64)
    b.add_argument("--repeat-prompts", action="store_true",
                   help="send the same 8 prompts over and over (default: every request a prompt of its own)")
    b.add_argument("--json", dest="json_path", help="write the results to this file")
    b.add_argument("--peer", choices=["ct2", "llamacpp"], action="append", default=[],
                   help="also run the same prompts on a peer engine, repeatable (installed by "
                        "scripts/peers-setup.sh [llamacpp])")
    b.add_argument("--rounds", type=int, default=1,
                   help="run each level this many times, cogkit and the peers alternating; report medians "
                        "and each round's ratio (default 1)")
    b.add_argument("--peer-weights", help="a torch build the peer converts (default: the served weights; "
                   "needed when those are a ctranslate2 build)")
    b.set_defaults(func=cmd_bench_serve)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def one_request(server, prompt: str, max_new: int) -> dict:
    sent = time.monotonic()
    first = None
    final = {}
    for event, data in server.stream({"prompt": prompt, "temperature": 0, "max_new_tokens": max_new}):
        if event == "output" and first is None:
            first = time.monotonic()
        if event == "completed":
            final = data
    done = time.monotonic()
    if final.get("status") != "succeeded":
        raise RuntimeError(f"a prediction failed: {final.get('error') or final.get('status')}")
    tokens = final["metrics"]["output_token_count"]
    first = first or done
    return {"ttft": first - sent, "tokens": tokens, "text": "".join(final["output"]),
            "stream_tps": (tokens - 1) / (done - first) if tokens > 1 and done > first else 0.0}


def bench_prompts(first: int, count: int, repeat: bool = False) -> list[str]:
    """The prompts of requests first..first+count-1 of a run: each its own unless `repeat`."""
    return [PROMPTS[n % len(PROMPTS)] if repeat else f"Request {n + 1}. {PROMPTS[n % len(PROMPTS)]}"
            for n in range(first, first + count)]


def serve_level(server, concurrency: int, prompts: list[str], max_new: int) -> dict:
    requests = len(prompts)
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one_request(server, p, max_new), prompts))
    wall = time.monotonic() - started
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": requests, "output_tokens": tokens,
            "wall_seconds": round(wall, 3), "aggregate_tokens_per_second": round(tokens / wall, 2),
            "ttft_p50": round(percentile([r["ttft"] for r in results], 0.5), 3),
            "ttft_p95": round(percentile([r["ttft"] for r in results], 0.95), 3),
            "per_stream_tokens_per_second": round(statistics.median(r["stream_tps"] for r in results), 2),
            "texts_in_order": [r["text"] for r in results], "ttfts": [r["ttft"] for r in results],
            "stream_tps": [r["stream_tps"] for r in results]}


def merge_rounds(rounds: list[dict]) -> dict:
    """One level's rounds as one entry: the median round's aggregate, TTFT and per-stream figures over
    every request of every round, and each round's aggregate (`round_aggregates`)."""
    ttfts = [t for r in rounds for t in r["ttfts"]]
    stream_tps = [t for r in rounds for t in r["stream_tps"]]
    aggregates = [r["aggregate_tokens_per_second"] for r in rounds]
    return {"concurrency": rounds[0]["concurrency"], "requests": rounds[0]["requests"], "rounds": len(rounds),
            "output_tokens": sum(r["output_tokens"] for r in rounds),
            "wall_seconds": round(sum(r["wall_seconds"] for r in rounds), 3),
            "aggregate_tokens_per_second": round(statistics.median(aggregates), 2),
            "round_aggregates": aggregates,
            "ttft_p50": round(percentile(ttfts, 0.5), 3), "ttft_p95": round(percentile(ttfts, 0.95), 3),
            "per_stream_tokens_per_second": round(statistics.median(stream_tps), 2)}


def merge_peer_rounds(rounds: list[dict], cogkit_aggregates: list[float]) -> dict:
    """A peer's rounds at one level: its median aggregate and cogkit's ratio to it in each round."""
    aggregates = [r["aggregate_tokens_per_second"] for r in rounds]
    ratios = [round(c / p, 3) for c, p in zip(cogkit_aggregates, aggregates, strict=True)]
    return {**rounds[0], "rounds": len(rounds), "aggregate_tokens_per_second": round(statistics.median(aggregates), 2),
            "round_aggregates": aggregates, "cogkit_ratio_per_round": ratios,
            "cogkit_ratio_median": round(statistics.median(ratios), 3),
            "output_tokens": sum(r["output_tokens"] for r in rounds),
            "wall_seconds": round(sum(r["wall_seconds"] for r in rounds), 3)}


def export_hf_folder(folder: Path) -> Path:
    """The built weights as a plain Hugging Face Llama folder (unfused, float32) for peer engines;
    written once under .peers/models/, keyed by the weights' checksum."""
    import torch
    from safetensors.torch import load_file, save_file

    from models.llm.llama import LlamaConfig, split_projections

    manifest = json.loads((folder / "manifest.json").read_text())
    key = manifest["files"]["model.safetensors"]["sha256"][:12]
    dest = Path(".peers/models") / f"{folder.name}-{key}"
    if (dest / "model.safetensors").is_file():
        return dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    state = load_file(str(folder / "model.safetensors"))
    for name in [k[: -len(".scale")] for k in state if k.endswith(".scale")]:  # an int8 build
        state[f"{name}.weight"] = state[f"{name}.weight"].float() * state.pop(f"{name}.scale")[:, None]
    cfg = LlamaConfig.from_file(folder / "config.json")
    state = {k: v.float().contiguous() for k, v in split_projections(state, cfg).items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters", None)  # CTranslate2 4.6 reads transformers 4's rope_theta form
    (dest / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32", "dtype": "float32"}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dest / name).write_text((folder / name).read_text())
    del torch
    return dest.resolve()


def ct2_level(hf: Path, quant: str, prompt_ids: list[list[int]], concurrency: int, requests: int,
              max_new: int) -> dict:
    """CTranslate2 on the same weights and prompt ids, `generate_batch` with batch = concurrency."""
    import site

    script = Path(__file__).resolve().parent.parent / "scripts" / "peer_ct2.py"
    # The converter needs transformers and torch: borrowed from this venv, not installed there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    out = subprocess.run([str(PEER_PYTHON), str(script), str(hf), quant, str(concurrency), str(requests),
                          str(max_new)], input=json.dumps(prompt_ids), capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"ct2 peer failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_seconds(work, runs: int) -> float:
    """The median time of `runs` calls of `work()`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def memory_read_gbps(mib: int = 512, runs: int = 5, device: str = "cpu") -> float:
    """Memory read bandwidth on this process's threads, or of a GPU's memory (median of `runs` sums
    over a buffer far larger than the caches): batch-1 decode reads every weight once per token, so
    bandwidth / weight bytes is its ceiling."""
    import torch

    if device == "cuda":
        mib *= 8  # past the GPU's 50-60 MB of L2 by far; float() waits for the sum
    buf = torch.ones(mib * 2**20 // 4, device=device)
    float(buf.sum())  # warm (on a GPU, the first call also loads the kernel)
    return buf.numel() * 4 / median_seconds(lambda: float(buf.sum()), runs) / 1e9


def matmul_gflops(size: int = 1536, runs: int = 5) -> float:
    """Float32 matrix-product speed on this process's threads, in GFLOP/s (median of `runs` products of
    two size x size matrices). A step of c rows does 2 x c multiply-adds per weight: past a few rows
    it is bound by this, not by reading the weights."""
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b  # warm
    return 2 * size**3 / median_seconds(lambda: a @ b, runs) / 1e9


def streams_ceiling(streams: int, weight_bytes: int, gbps: float, gflops: float) -> float:
    """The most tokens per second `streams` float32 streams can make: a step reads every weight once
    (weight_bytes / bandwidth) and does 2 x streams operations per weight (compute), and takes at
    least the longer of the two. Attention and everything else come on top."""
    step = max(weight_bytes / (gbps * 1e9), 2 * streams * (weight_bytes / 4) / (gflops * 1e9))
    return streams / step


def bytes_read_per_token(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor, except an embedding table that is only
    looked up (one row) because the head has its own copy (untied, or an int8 build's int8 head)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    if "lm_head.weight" in sizes:
        sizes.pop("model.embed_tokens.weight", None)
    return sum(sizes.values())


def cmd_bench_serve(args) -> int:
    from cogkit.ct2_cpu import isa_in_use
    from cogkit.server import CogServer
    from cogkit.weights import weights_dir
    from models import get_model

    spec = get_model(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.rounds < 1:
        raise SystemExit(f"--rounds: must be 1 or more, got {args.rounds}")
    report = {"model": spec.name, "max_new_tokens": args.max_new_tokens, "levels": [], "peers": {},
              "prompts": "repeated" if args.repeat_prompts else "distinct"}
    # In this process's environment, so that a CTranslate2 model server and the CTranslate2 peer
    # (subprocesses) run the same kernels (cogkit/ct2_cpu.py).
    report["ctranslate2_isa"] = isa_in_use()
    folder = weights_dir(spec.name)
    manifest = json.loads((folder / "manifest.json").read_text())
    report["dtype"] = manifest.get("dtype")
    report["engine"] = manifest.get("engine", "torch")
    weight_bytes = (bytes_read_per_token(folder / "model.safetensors") if report["engine"] == "torch" else
                    (folder / "ctranslate2" / "model.bin").stat().st_size)  # its head shares the table
    peer_folder = Path(args.peer_weights) if args.peer_weights else folder
    if args.peer and not (peer_folder / "model.safetensors").is_file():
        raise SystemExit(f"--peer: {peer_folder} is not a torch build; pass --peer-weights with a torch build "
                         "of the same source (the peer converts it with CTranslate2's own converter)")
    gguf = None
    if "llamacpp" in args.peer:  # converted before the server starts, not between levels
        from cogkit.peer_llamacpp import PeerUnavailable, peer_gguf

        try:
            gguf = peer_gguf(json.loads((peer_folder / "manifest.json").read_text()))
        except PeerUnavailable as e:
            raise SystemExit(f"--peer llamacpp: {e}") from None
    import torch

    # The device the server's predictor picks (predict.py): a GPU's memory bounds a GPU's decode.
    report["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    report["memory_read_gbps"] = round(memory_read_gbps(device=report["device"]), 2)
    report["batch1_ceiling_tokens_per_second"] = round(report["memory_read_gbps"] * 1e9 / weight_bytes, 2)
    print(f"{report['device']} memory read {report['memory_read_gbps']} GB/s: batch-1 ceiling "
          f"{report['batch1_ceiling_tokens_per_second']} tok/s for {weight_bytes / 1e6:.0f} MB of weights")
    ceiling = None  # tokens/s at a number of streams (float32 builds)
    if report["dtype"] == "float32" and report["engine"] == "torch":
        # Many streams' ceiling: compute catches up with memory (see streams_ceiling).
        report["matmul_gflops"] = round(matmul_gflops(), 1)
        ceiling = functools.partial(streams_ceiling, weight_bytes=weight_bytes,
                                    gbps=report["memory_read_gbps"], gflops=report["matmul_gflops"])
        print(f"float32 matrix products {report['matmul_gflops']} GFLOP/s: ceilings "
              + ", ".join(f"{c} stream{'s' if c > 1 else ''} {ceiling(c):.1f} tok/s" for c in levels))
    with CogServer(spec.runner, env={"COG_MAX_CONCURRENCY": str(max(levels))}) as server:
        server.start().wait_ready()
        one_request(server, "Hello.", 4)  # warm
        sent = 0
        rounds = {c: [] for c in levels}
        peer_rounds = {c: {} for c in levels}
        # Round by round, every level in turn: a level's ratio to another (8 streams against 1) then
        # compares runs minutes apart, not the start of the benchmark with its end.
        for r in range(args.rounds):
            for c in levels:
                prompts = bench_prompts(sent, max(args.requests, c), args.repeat_prompts)
                sent += len(prompts)
                level = serve_level(server, c, prompts, args.max_new_tokens)
                rounds[c].append(level)
                tag = f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else ""
                print(f"cogkit c={c}: {level['aggregate_tokens_per_second']} tok/s aggregate, TTFT p50 "
                      f"{level['ttft_p50']}s p95 {level['ttft_p95']}s, per stream "
                      f"{level['per_stream_tokens_per_second']} tok/s{tag}", flush=True)
                for name, peer in run_peers(args, report, folder, peer_folder, gguf, prompts, c, level):
                    peer_rounds[c].setdefault(name, []).append(peer)
        base = [lv["aggregate_tokens_per_second"] for lv in rounds[levels[0]]]
        for c in levels:
            merged = merge_rounds(rounds[c])
            aggregates = merged["round_aggregates"]
            # this level's aggregate over the first level's (e.g. 8 streams over 1) within each round
            merged["over_first_level_per_round"] = [round(a / b, 3) for a, b in zip(aggregates, base, strict=True)]
            merged["over_first_level_median"] = round(statistics.median(merged["over_first_level_per_round"]), 3)
            if ceiling is not None:
                merged["ceiling_tokens_per_second"] = round(ceiling(c), 2)
                # the most this level's aggregate can be over the first level's, on this machine
                merged["over_first_level_ceiling"] = round(ceiling(c) / ceiling(levels[0]), 3)
            report["levels"].append(merged)
            if c != levels[0]:
                print(f"c={c} over c={levels[0]}, round by round: {merged['over_first_level_per_round']}, "
                      f"median {merged['over_first_level_median']}"
                      + (f" (ceiling {merged['over_first_level_ceiling']})" if ceiling is not None else ""),
                      flush=True)
            for name, runs in peer_rounds[c].items():
                peer = merge_peer_rounds(runs, aggregates)
                report["peers"].setdefault(name, []).append(peer)
                if args.rounds > 1:
                    print(f"c={c} over {args.rounds} rounds: cogkit median {merged['aggregate_tokens_per_second']}, "
                          f"{name} median {peer['aggregate_tokens_per_second']} tok/s; cogkit/{name} per round "
                          f"{peer['cogkit_ratio_per_round']}, median {peer['cogkit_ratio_median']}", flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


def run_peers(args, report: dict, folder: Path, peer_folder: Path, gguf, prompts: list[str], c: int,
              level: dict):
    """The peers on the prompts cogkit just served (interleaved: right after it), as (name, result)."""
    if not args.peer:
        return
    ids = prompt_ids(folder, prompts)
    if "ct2" in args.peer:
        quant = "int8" if report["dtype"] == "int8" else "float32"
        peer = ct2_level(export_hf_folder(peer_folder), quant, ids, c, len(prompts), args.max_new_tokens)
        peer.pop("token_ids")
        print(f"ct2    c={c}: {peer['aggregate_tokens_per_second']} tok/s aggregate", flush=True)
        yield "ct2", peer
    if gguf is not None:
        from cogkit.peer_llamacpp import llamacpp_level

        peer = llamacpp_level(gguf, ids, c, args.max_new_tokens)
        texts = peer.pop("texts_in_order")
        # greedy on the same values: how many answers are cogkit's, word for word
        peer["same_text_as_cogkit"] = sum(a == b for a, b in zip(texts, level["texts_in_order"]))
        print(f"llama.cpp c={c}: {peer['aggregate_tokens_per_second']} tok/s aggregate "
              f"({peer['same_text_as_cogkit']}/{len(texts)} answers as cogkit's)", flush=True)
        yield "llamacpp", peer


def prompt_ids(folder: Path, prompts: list[str]) -> list[list[int]]:
    from models.llm.text_generation import TextGenerator

    gen = _generators.get(folder) or _generators.setdefault(folder, TextGenerator.__new__(TextGenerator))
    if not hasattr(gen, "tokenizer"):
        from models.llm.chat_template import ChatTemplate
        from tokenizers import Tokenizer

        gen.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        gen.special = {k: cfg.get(k) for k in ("bos_token", "eos_token")}
        gen.chat_template = ChatTemplate(cfg["chat_template"], gen.special) if cfg.get("chat_template") else None
    return [gen.encode(gen.format_prompt(p, None)) for p in prompts]


_generators: dict = {}

