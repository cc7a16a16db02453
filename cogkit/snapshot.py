"""Boot-time snapshots: what setup() produced beyond the weights, kept for the next boot.

A snapshot lives in `weights/MODEL/snapshot/KEY/`. KEY hashes everything that invalidates it: the
weights manifest, the versions of cogkit, torch, transformers and diffusers, Python, the device type
and capability, and whatever the predictor adds. A snapshot holds its own `snapshot.json` with the
sha256 of every file, written last; the folder is renamed into place in one step, so two workers
booting at once cannot corrupt it (the second rename fails and that worker discards its copy).
A missing, stale or corrupt snapshot is logged and rebuilt: it never fails a boot.
"""

import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cogkit.weights import MANIFEST, sha256_file, weights_dir, write_json_atomic

SNAPSHOT_DIR = "snapshot"
SNAPSHOT_MANIFEST = "snapshot.json"
KEYED_PACKAGES = ("cogkit", "torch", "transformers", "diffusers", "tokenizers", "safetensors")


def device_facts(device: str) -> dict:
    facts = {"device": device.split(":")[0]}
    if facts["device"] == "cuda":
        if "torch" in sys.modules:
            import torch

            facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
            facts["gpu"] = torch.cuda.get_device_name()
        else:  # a torch-free predictor (whisper on CTranslate2, tts on onnxruntime) or image
            facts.update(nvidia_smi_facts())
    return facts


def nvidia_smi_facts() -> dict:
    """GPU 0's name and compute capability from nvidia-smi, the same strings torch reports."""
    import subprocess

    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        name, capability = (part.strip() for part in line.rsplit(",", 1))
        return {"capability": capability, "gpu": name}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"capability": None, "gpu": None}


def key_facts(weights_folder: Path, device: str, extra: dict | None = None) -> dict:
    versions = {}
    for pkg in KEYED_PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    manifest = (Path(weights_folder) / MANIFEST).read_bytes()
    return {"weights_manifest": hashlib.sha256(manifest).hexdigest(), "python": platform.python_version(),
            "versions": versions, **device_facts(device), "extra": extra or {}}


def snapshot_key(facts: dict) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


class Snapshot:
    def __init__(self, weights_folder: Path, device: str = "cpu", extra: dict | None = None,
                 log: Callable[[str], None] = lambda m: print(m, flush=True)):
        self.weights_folder = Path(weights_folder)
        self.facts = key_facts(self.weights_folder, device, extra)
        self.key = snapshot_key(self.facts)
        self.root = self.weights_folder / SNAPSHOT_DIR
        self.path = self.root / self.key
        self.log = log

    def problems(self) -> list[str]:
        """What is wrong with the snapshot for this key; empty when it is present and intact."""
        meta_path = self.path / SNAPSHOT_MANIFEST
        if not meta_path.is_file():
            return [f"no snapshot for key {self.key}"]
        try:
            meta = json.loads(meta_path.read_text())
            files = meta["files"]
        except (ValueError, KeyError) as e:
            return [f"{SNAPSHOT_MANIFEST} unreadable: {e}"]
        if meta.get("key") != self.key:
            return [f"{SNAPSHOT_MANIFEST} is for key {meta.get('key')}, not {self.key}"]
        problems = []
        for rel, want in files.items():
            path = self.path / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif path.stat().st_size != want["size"] or sha256_file(path) != want["sha256"]:
                problems.append(f"{rel}: differs from {SNAPSHOT_MANIFEST}")
        return problems

    def restore(self) -> Path | None:
        """The snapshot folder when it is present and intact; otherwise None, with the reason logged."""
        problems = self.problems()
        if not problems:
            self.log(f"snapshot: restored {self.path}")
            return self.path
        others = [p.name for p in self.root.glob("*") if p.is_dir() and p.name != self.key
                  and not p.name.startswith(".")] if self.root.is_dir() else []
        reason = problems[0] if len(problems) == 1 else f"{len(problems)} problems: {'; '.join(problems)}"
        if self.path.exists():
            self.log(f"snapshot: ignoring {self.path} ({reason}); it will be rebuilt")
            self.discard()
        elif others:
            self.log(f"snapshot: stale snapshot(s) {', '.join(others)} do not match key {self.key}; "
                     "it will be rebuilt")
        else:
            self.log(f"snapshot: none yet for key {self.key}; it will be recorded after warm-up")
        return None

    def discard(self) -> None:
        """Move a bad snapshot out of the way in one step, then delete it."""
        if not self.path.exists():
            return
        trash = self.root / f".discarded-{self.key}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.path.rename(trash)
        except OSError:
            return  # another worker moved it already
        shutil.rmtree(trash, ignore_errors=True)

    def save(self, fill: Callable[[Path], None]) -> bool:
        """Record a snapshot: `fill(folder)` writes its files. Returns whether this call wrote it.
        Never raises: a failure to snapshot must not fail the boot that tried."""
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.saving-", dir=self.root))
            started = time.perf_counter()
            fill(tmp)
            files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            write_json_atomic(tmp / SNAPSHOT_MANIFEST, {"key": self.key, "facts": self.facts, "files": files,
                                                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
            tmp.chmod(0o755)
            try:
                tmp.rename(self.path)
            except OSError:
                self.log(f"snapshot: another worker saved {self.path} first; keeping theirs")
                return False
            tmp = None
            self.log(f"snapshot: saved {self.path} in {time.perf_counter() - started:.2f}s")
            return True
        except Exception as e:  # noqa: BLE001 - logged, and the boot goes on
            self.log(f"snapshot: could not save ({type(e).__name__}: {e}); the next boot will try again")
            return False
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def snapshots_enabled() -> bool:
    """COGKIT_SNAPSHOT=0 boots without reading or writing a snapshot (`cogkit bench boot` variant (b))."""
    return os.environ.get("COGKIT_SNAPSHOT", "1") == "1"


class BootSnapshot:
    """The snapshot part of a predictor's setup(), the same for every model:

        boot = BootSnapshot(folder, dev, extra)   # restores the snapshot for this key, if intact
        ... load, warm up (boot.restored holds the snapshot's files, or None) ...
        boot.check_warmup("tokens", warm, "output")   # a different warm-up: the snapshot is replaced
        boot.record(fill, timer)                  # no (valid) snapshot: record this boot's

    With COGKIT_SNAPSHOT=0 (or enabled=False) nothing is read or written and `extra` is not called."""

    def __init__(self, folder: Path, device: str, extra: dict | Callable[[], dict] | None = None,
                 enabled: bool | None = None, log: Callable[[str], None] = lambda m: print(m, flush=True)):
        self.enabled = snapshots_enabled() if enabled is None else enabled
        self.log = log
        self.snapshot = self.restored = None
        if self.enabled:
            self.snapshot = Snapshot(folder, device, extra() if callable(extra) else extra, log=log)
            self.restored = self.snapshot.restore()

    def discard(self, reason: str | None = None) -> None:
        """Drop the restored snapshot (logging `reason`); record() then writes a new one."""
        if reason:
            self.log(f"snapshot: {reason}")
        if self.snapshot is not None:
            self.snapshot.discard()
        self.restored = None

    def check_warmup(self, field: str, warm, what: str = "output") -> bool:
        """Whether the restored snapshot recorded this warm-up `field` as `warm`. When it recorded
        something else, the snapshot no longer describes this model: it is discarded."""
        if self.restored is None:
            return False
        if recorded_warmup(self.restored, field) == warm:
            return True
        self.discard(f"warm-up {what} differs from the snapshot's; discarding it")
        return False

    def save(self, fill: Callable[[Path], None]) -> bool:
        """Record a snapshot now (`fill(folder)` writes its files); never raises."""
        return self.snapshot is not None and self.snapshot.save(fill)

    def record(self, fill: Callable[[Path], None], timer=None) -> None:
        """After a boot that restored no (valid) snapshot: record this one, timed as phase "snapshot"."""
        if self.enabled and self.restored is None:
            self.save(fill)
            if timer is not None:
                timer.done("snapshot")


# ---------------------------------------------------------------- warm-up records

WARMUP_FILE = "warmup.json"


def write_warmup(folder: Path, **record) -> None:
    """Record what this boot's warm-up produced (tokens, a transcript, a picture's fingerprint …)."""
    (Path(folder) / WARMUP_FILE).write_text(json.dumps(record))


def recorded_warmup(restored: Path | None, field: str):
    """What a snapshot recorded of its warm-up; None when absent or unreadable, which callers treat
    as a mismatch (a rebuilt snapshot), never as a failed boot."""
    if restored is None:
        return None
    try:
        return json.loads((restored / WARMUP_FILE).read_text())[field]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_snapshot(model: str, device: str | None = None, extra: dict | None = None) -> list[str]:
    """Problems with MODEL's snapshot for this machine (used by `cogkit check`)."""
    from models import get_model

    model = get_model(model).name
    folder = weights_dir(model)
    if not (folder / MANIFEST).is_file():
        return [f"{folder}: no built weights"]
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    snap = Snapshot(folder, device, extra if extra is not None else snapshot_extra(model, device),
                    log=lambda m: None)
    return [f"{snap.path}: {p}" for p in snap.problems()]


def snapshot_extra(model: str, device: str) -> dict:
    """The predictor-specific part of a model's snapshot key, as its setup() computes it."""
    from models import get_model

    builder = get_model(model).builder_module()
    if not hasattr(builder, "snapshot_extra"):
        return {}
    # A builder whose key depends on the built folder takes it (several models may share the builder).
    if "folder" in inspect.signature(builder.snapshot_extra).parameters:
        return builder.snapshot_extra(device, folder=weights_dir(get_model(model).name))
    return builder.snapshot_extra(device)


# ---------------------------------------------------------------- torch.compile caches

COMPILE_DIR = "compile"
MEGA_CACHE = "mega_cache.bin"


def use_compile_cache(restored: Path | None) -> Path:
    """Point Inductor's and Triton's caches at a private, writable folder seeded from the snapshot
    (the snapshot itself may sit on a read-only image layer). Call before the first compile."""
    cache = Path(tempfile.mkdtemp(prefix="cogkit-compile-"))
    if restored is not None and (restored / COMPILE_DIR).is_dir():
        shutil.copytree(restored / COMPILE_DIR, cache, dirs_exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    if restored is not None and (restored / MEGA_CACHE).is_file():
        import torch

        torch.compiler.load_cache_artifacts((restored / MEGA_CACHE).read_bytes())
    return cache


def save_compile_cache(cache: Path, into: Path) -> None:
    """Copy the compile caches and PyTorch's portable cache artifacts into a snapshot being written."""
    import torch

    shutil.copytree(cache, into / COMPILE_DIR, dirs_exist_ok=True)
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is not None:
        (into / MEGA_CACHE).write_bytes(artifacts[0])
