"""What the audio predictors add to their snapshot keys: the CPU they run on. CTranslate2's int8
kernels and onnxruntime's optimised graphs are chosen per instruction set, so a snapshot recorded on
one CPU says nothing about another."""

import hashlib
import platform
from pathlib import Path


def cpu_fingerprint() -> str:
    """A short hash of the CPU model and its instruction-set flags (Linux), else of the platform."""
    facts = [platform.machine()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags", "Features") and line not in facts:
                facts.append(line)
    except OSError:
        facts.append(platform.processor())
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# TTS: the Piper voice's graph as onnxruntime optimised it on this machine.

OPTIMIZED_GRAPH = "voice.optimized.onnx"


def audio_fingerprint(samples) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def load_piper(folder: Path, device: str, use_snapshot: bool | None = None,
               log=lambda m: print(m, flush=True)):
    """The voice's synthesizer and a function to call with the warm-up's samples.

    With a snapshot for this key, the session loads the optimised graph it holds with optimisation
    off; the warm-up must then sound exactly as recorded, else the snapshot is discarded and the voice
    reloaded from voice.onnx (the function returns the replacement). Without one, onnxruntime writes
    its optimised graph while it builds the session, and the function records it with the warm-up.
    `use_snapshot`: None follows COGKIT_SNAPSHOT."""
    import shutil
    import tempfile

    from cogkit.snapshot import BootSnapshot, recorded_warmup, write_warmup
    from models.audio.tts import PiperSynthesizer, onnx_session, snapshot_extra

    onnx = Path(folder) / "voice.onnx"
    boot = BootSnapshot(folder, device, lambda: snapshot_extra(device), enabled=use_snapshot, log=log)
    if not boot.enabled:
        return PiperSynthesizer(onnx, device), lambda samples: None
    restored = boot.restored
    if restored is not None and (restored / OPTIMIZED_GRAPH).is_file():
        synth = PiperSynthesizer(onnx, device, onnx_session(restored / OPTIMIZED_GRAPH, device, optimized=True))

        def check(samples):
            if recorded_warmup(restored, "audio_sha256") == audio_fingerprint(samples):
                return None
            boot.discard("the optimised graph's warm-up audio differs from the recording; discarding it "
                         "and reloading the voice")
            return PiperSynthesizer(onnx, device)

        return synth, check
    scratch = Path(tempfile.mkdtemp(prefix="cogkit-tts-")) / OPTIMIZED_GRAPH
    synth = PiperSynthesizer(onnx, device, onnx_session(onnx, device, save_optimized=scratch))

    def record(samples):
        def fill(into: Path) -> None:
            shutil.copyfile(scratch, into / OPTIMIZED_GRAPH)
            write_warmup(into, audio_sha256=audio_fingerprint(samples))

        boot.save(fill)
        shutil.rmtree(scratch.parent, ignore_errors=True)
        return None

    return synth, record
