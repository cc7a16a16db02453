"""`cogkit bench boot MODEL`: time from process start to READY on the real coglet server.

Variants, measured side by side (interleaved, each boot a fresh process, same page cache):
  (a) naive:    the model's `naive_runner`, what a typical predict.py does (from_pretrained on the
                source checkpoint at every boot, compile on GPU, warm-up);
  (b) built:    cogkit's predictor on the built weights, snapshot off;
  (c) snapshot: cogkit's predictor on the built weights, restoring the boot-time snapshot;
  floor:        a fresh Python that imports the model's engine (`floor_imports`: torch, faster_whisper, piper)
                and cog (as the model server's processes import it: cogkit/startup), and reads the
                weights files once.
Each variant then serves the model's `bench_input`; the outputs must agree.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASE = re.compile(r"^setup: (\w[\w ]*) took ([\d.]+)s$")


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("boot", help="boot time of the naive path, built weights, and built weights + snapshot")
    b.add_argument("model", help=model_help)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--json", dest="json_path", help="write the results to this file")
    b.add_argument("--compile", action="store_true", help="set COGKIT_COMPILE=1 for (b) and (c)")
    b.add_argument("--skip-naive", action="store_true", help="leave out (a), the slowest variant")
    b.set_defaults(func=cmd_bench_boot)
    from cogkit.bench_serve import add_bench_serve  # `cogkit bench serve`
    from cogkit.container_bench import add_bench_commands  # `cogkit bench container`

    add_bench_serve(bench, model_help)

    add_bench_commands(bench, model_help)


def boot_once(runner: str, env: dict, bench_input: dict, timeout: float = 1800) -> dict:
    """Boot a fresh server, time READY and the first streamed output, collect the output."""
    from cogkit.server import CogServer

    report = Path(tempfile.mkdtemp(prefix="cogkit-bench-")) / "setup.json"
    with CogServer(runner, env={**env, "COGKIT_SETUP_REPORT": str(report)}, setup_timeout=timeout) as server:
        server.start()
        # Ask for READY every 5 ms: at the default 0.1 s the boot reads up to 0.1 s late, while
        # the floor it is compared with is timed exactly.
        server.wait_ready(poll=0.005)
        ready = server.ready_at - server.started_at
        # Phases from the predictor's own report (SetupTimer), else from its log lines.
        phases = json.loads(report.read_text()) if report.is_file() else {
            m[1]: float(m[2]) for line in server.setup_log_lines() if (m := PHASE.match(line.strip()))}
        shutil.rmtree(report.parent, ignore_errors=True)
        sent = time.monotonic()
        first, final = None, {}
        if server.schema["paths"]["/predictions"]["post"].get("x-cog-streaming"):
            for event, data in server.stream(bench_input):
                if event == "output":
                    first = first or time.monotonic() - sent
                elif event == "completed":
                    final = data
        else:  # coglet serves SSE only to predictors that yield; the rest answer in one piece
            final = server.predict(bench_input)
        if final.get("status") != "succeeded":
            raise RuntimeError(f"{runner}: prediction {final.get('status')}: {final.get('error')}")
        total = time.monotonic() - sent
        output = final.get("output")
    return {"ready_s": ready, "first_output_s": first if first is not None else total,
            "prediction_s": total, "phases": phases, "metrics": final.get("metrics", {}),
            "output": "".join(output) if isinstance(output, list) and all(isinstance(o, str) for o in output)
            else output}


def floor_once(weights: Path, imports: str = "torch") -> float:
    """A fresh Python that imports the predictor's engine (torch unless the model says otherwise) and
    cog, and reads every weights file once."""
    code = (f"import sys, pathlib, {imports}, cog\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
            "    p.is_file() and p.read_bytes()\n")
    # cog imported as the model server's processes import it (cogkit/startup/sitecustomize.py)
    from cogkit.server import STARTUP_DIR

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(STARTUP_DIR), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", code, str(weights)], check=True, env=env)
    return time.monotonic() - start


def summarize(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "runs": values}


def bench_boot(model: str, runs: int = 3, compile: bool = False, skip_naive: bool = False, log=print) -> dict:
    from cogkit.snapshot import Snapshot, snapshot_extra
    from cogkit.sources import resolve
    from cogkit.weights import read_manifest, weights_dir
    from models import get_model

    spec = get_model(model)
    model = spec.name
    folder = weights_dir(spec.name)
    manifest = read_manifest(folder)
    common = {"COGKIT_WEIGHTS_DIR": str(folder.parent), "COGKIT_MODEL": spec.name}
    if compile:
        common["COGKIT_COMPILE"] = "1"
    variants, scratch = {}, None
    if spec.naive_runner and not skip_naive:
        source = spec.default_source
        if source.startswith("builtin:"):  # materialise it once, outside the timed boots
            scratch = Path(tempfile.mkdtemp(prefix=f"cogkit-bench-{model}-"))
            source_path = spec.builder_module().builtin_source(source.removeprefix("builtin:"), scratch / "source")
        else:
            source_path = resolve(manifest.get("source") or source)[0]
        variants["a_naive"] = (spec.naive_runner, {**common, "COGKIT_SOURCE_PATH": str(source_path)})
    variants["b_built"] = (spec.runner, {**common, "COGKIT_SNAPSHOT": "0"})
    variants["c_snapshot"] = (spec.runner, {**common, "COGKIT_SNAPSHOT": "1"})

    # The snapshot for (c) is recorded by one untimed boot if it is not there yet (`cogkit snapshot`).
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    env_before = os.environ.get("COGKIT_COMPILE")
    if compile:
        os.environ["COGKIT_COMPILE"] = "1"
    try:
        snap = Snapshot(folder, device, snapshot_extra(model, device), log=lambda m: None)
    finally:
        if env_before is None:
            os.environ.pop("COGKIT_COMPILE", None)
    if snap.problems():
        log(f"recording the snapshot {snap.path} (untimed boot)…")
        boot_once(spec.runner, variants["c_snapshot"][1], spec.bench_input)

    results = {name: [] for name in variants}
    floors = []
    try:
        for run in range(runs):
            for name, (runner, env) in variants.items():
                log(f"run {run + 1}/{runs}: {name}…")
                results[name].append(boot_once(runner, env, spec.bench_input))
                log(f"  ready in {results[name][-1]['ready_s']:.2f}s")
            floors.append(floor_once(folder, spec.floor_imports))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    report = {"model": model, "device": device, "runs": runs, "compile": compile,
              "weights": {"source": manifest.get("source"), "dtype": manifest.get("dtype")},
              "floor_s": summarize(floors), "floor_imports": spec.floor_imports, "variants": {}}
    for name, boots in results.items():
        report["variants"][name] = {
            "ready_s": summarize([b["ready_s"] for b in boots]),
            "first_output_s": summarize([b["first_output_s"] for b in boots]),
            "prediction_s": summarize([b["prediction_s"] for b in boots]),
            "phases_median": {k: statistics.median(b["phases"].get(k, 0.0) for b in boots)
                              for k in sorted({k for b in boots for k in b["phases"]})},
            "metrics_last": boots[-1]["metrics"],
            "output": boots[-1]["output"],
            "outputs_stable": all(b["output"] == boots[0]["output"] for b in boots),
        }
    v = report["variants"]
    c = v["c_snapshot"]["ready_s"]["median"]
    outputs = {name: data["output"] for name, data in v.items()}
    report["same_output"] = len({json.dumps(o, sort_keys=True) for o in outputs.values()}) == 1
    report["ratios"] = {"c_over_floor": c / report["floor_s"]["median"],
                        "b_over_c": v["b_built"]["ready_s"]["median"] / c}
    if "a_naive" in v:
        report["ratios"]["a_over_c"] = v["a_naive"]["ready_s"]["median"] / c
        tps = {name: data["metrics_last"].get("tokens_per_second") for name, data in v.items()}
        report["tokens_per_second"] = tps
        report["criteria"] = {
            "c_faster_than_a": report["ratios"]["a_over_c"] > 1,
            "c_at_least_10x_faster_than_a": report["ratios"]["a_over_c"] >= 10,
            "c_within_2x_of_floor": report["ratios"]["c_over_floor"] <= 2,
            "same_output": report["same_output"],
        }
        # Same output means the same tokens: count them once, from cogkit's own metric.
        tokens = results["c_snapshot"][-1]["metrics"].get("output_token_count")
        naive_speed = decode_speed(results["a_naive"][-1], tokens) if report["same_output"] else None
        ours = decode_speed(results["c_snapshot"][-1], tokens)
        if naive_speed and ours:
            report["decode_tokens_per_second"] = {"a_naive": naive_speed, "c_snapshot": ours}
            report["criteria"]["c_decodes_no_slower_than_a"] = ours >= naive_speed * 0.95
    return report


def decode_speed(boot: dict, tokens: int | None) -> float | None:
    """Tokens per second after the first output, measured from outside the server the same way for
    every variant (the naive predictor records no metrics of its own)."""
    elapsed = boot["prediction_s"] - boot["first_output_s"]
    return (tokens - 1) / elapsed if tokens and elapsed > 0 else None


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"boot to READY: {report['model']} on {report['device']} ({report['runs']} runs each)")
    for col in ("variant", "ready min", "ready median", "first output", "setup phases (median s)"):
        table.add_column(col)
    for name, data in report["variants"].items():
        phases = ", ".join(f"{k} {v:.2f}" for k, v in data["phases_median"].items())
        table.add_row(name, f"{data['ready_s']['min']:.2f}s", f"{data['ready_s']['median']:.2f}s",
                      f"{data['first_output_s']['median']:.3f}s", phases)
    table.add_row("floor", f"{report['floor_s']['min']:.2f}s", f"{report['floor_s']['median']:.2f}s", "", 
                  f"import {report['floor_imports']} + cog, read weights once")
    console.print(table)
    console.print("ratios: " + ", ".join(f"{k} = {v:.1f}x" for k, v in report["ratios"].items()))
    console.print(f"same output across variants: {report['same_output']}")
    if "decode_tokens_per_second" in report:
        console.print("decode tokens/s: " + ", ".join(f"{k} {v:.1f}"
                                                      for k, v in report["decode_tokens_per_second"].items()))
    for name, data in report["variants"].items():
        console.print(f"{name} output: {str(data['output'])[:120]!r}")
    metrics = report["variants"]["c_snapshot"]["metrics_last"]
    if metrics:
        console.print("c_snapshot prediction metrics: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


def cmd_bench_boot(args) -> int:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    report = bench_boot(args.model, runs=args.runs, compile=args.compile, skip_naive=args.skip_naive,
                        log=lambda m: console.print(m, markup=False))
    print_report(report, Console(soft_wrap=True))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0 if report["same_output"] else 1
