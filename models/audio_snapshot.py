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
