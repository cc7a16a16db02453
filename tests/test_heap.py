"""cogkit/heap.py: the Whisper predictor keeps large freed buffers for the next call."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A 64 MB buffer allocated, written and freed; prints how many MB of memory the process still holds
# after the free, over what it held before the allocation.
KEPT = """
import os, sys
import numpy as np
if sys.argv[1] == "keep":
    from cogkit.heap import keep_freed_memory
    assert keep_freed_memory()
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
buffer = np.empty(64 << 20, np.uint8)
buffer.fill(1)
del buffer
print(round(resident_mb() - before))
"""


def kept_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", KEPT, mode], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    return int(out.stdout)


def test_large_freed_buffers_stay_with_the_process():
    """By default glibc hands a freed 64 MB buffer straight back to the kernel, and the next one comes
    as fresh pages; after keep_freed_memory() the process keeps it for the next allocation."""
    assert kept_mb("default") < 8
    assert kept_mb("keep") >= 60
