"""llama.cpp as a peer for `cogkit bench serve --peer llamacpp`: its own server (`llama-server`,
continuous batching over `--parallel` slots), fed the same prompt ids as cogkit over HTTP.

llama.cpp is built from the source PyPI ships inside llama-cpp-python's sdist (the Hub and GitHub are
out of reach here) by `scripts/peers-setup.sh llamacpp` into .peers/llamacpp/bin; it is never a
runtime requirement. It runs the GGUF the build came from, converted by its own `llama-quantize` to
the build's precision: F32 for a float32 build (the same values cogkit dequantised), Q8_0 for an
int8 one (blocks of 32 weights per scale, where cogkit keeps one scale per row).
"""

import json
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cogkit.server import free_port

BIN = Path(".peers/llamacpp/bin")
GGUF_TYPES = {"float32": "F32", "int8": "Q8_0"}


class PeerUnavailable(RuntimeError):
    pass


def peer_gguf(manifest: dict) -> Path:
    """The build's source GGUF in the build's precision, written once under .peers/models/."""
    from cogkit.sources import resolve

    if not (BIN / "llama-server").is_file():
        raise PeerUnavailable("the llamacpp peer is not built: run `bash scripts/peers-setup.sh llamacpp` "
                              "(compiles llama.cpp, ~8 minutes on 2 cores)")
    kind = GGUF_TYPES.get(manifest.get("dtype"))
    if kind is None:
        raise PeerUnavailable(f"the llamacpp peer runs float32 and int8 builds, not {manifest.get('dtype')}")
    source = manifest.get("source", "")
    if not source.endswith(".gguf"):
        raise PeerUnavailable(f"the llamacpp peer needs a build made from a .gguf source, not {source}")
    key = manifest["files"]["model.safetensors"]["sha256"][:12]
    dest = Path(".peers/models") / f"llamacpp-{key}-{kind}.gguf"
    if not dest.is_file():
        path, _ = resolve(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_suffix(".partial")
        out = subprocess.run([str(BIN / "llama-quantize"), "--allow-requantize", str(path), str(partial), kind],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"llama-quantize failed: {out.stderr.strip()[-2000:]}")
        partial.replace(dest)
    return dest.resolve()


def llamacpp_version() -> str:
    """The build number and commit `llama-server --version` prints ("0.5.0-dev (build 1, commit 0c1e570)")."""
    out = subprocess.run([str(BIN / "llama-server"), "--version"], capture_output=True, text=True)
    line = next((ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version:")), "")
    return line.removeprefix("version:").strip() or "unknown"


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_server(gguf: Path, slots: int, context_per_slot: int) -> tuple[subprocess.Popen, str]:
    """llama-server on one thread (as every engine in the bench), `slots` sequences at once."""
    port = free_port()
    cmd = [str(BIN / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--threads", "1", "--threads-batch", "1", "--parallel", str(slots),
           "--ctx-size", str(slots * context_per_slot)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("llama-server did not become healthy in 120 s")


def llamacpp_level(gguf: Path, prompt_ids: list[list[int]], concurrency: int, max_new: int) -> dict:
    """Greedy completions of the prompt ids, `concurrency` requests at once; aggregate tok/s."""
    longest = max(len(ids) for ids in prompt_ids) + max_new
    proc, url = start_server(gguf, concurrency, 256 * -(-longest // 256))
    try:
        def one(ids: list[int]) -> dict:
            return post(f"{url}/completion", {"prompt": ids, "n_predict": max_new, "temperature": 0,
                                              "top_k": 1, "stream": False})
        one(prompt_ids[0][:8])  # warm
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, prompt_ids))
        wall = time.monotonic() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    tokens = sum(r["tokens_predicted"] for r in results)
    return {"engine": f"llama.cpp {llamacpp_version()} {gguf.stem.rsplit('-', 1)[-1]}", "concurrency": concurrency,
            "requests": len(prompt_ids), "output_tokens": tokens, "wall_seconds": round(wall, 3),
            "aggregate_tokens_per_second": round(tokens / wall, 2),
            "texts_in_order": [r["content"] for r in results]}
