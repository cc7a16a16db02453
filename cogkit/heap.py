"""Keep large freed memory in the process instead of handing it back to the kernel at once.

glibc's malloc serves a large request (above a threshold that starts at 128 KB and rises with what is
freed, up to 32 MB) with a fresh mapping from the kernel and unmaps it again on free; it also gives
the heap's free top back above 128 KB. A model that allocates the same large buffers at every call
(CTranslate2's Whisper encoder: attention scores of 6 heads x 1,500 x 1,500 float32, ~54 MB, per layer)
then pays for fresh pages each time: a fault and a page of zeros per 4 KB. Measured on tiny.en int8,
one thread (stop 31, docs/llm-serving-measurements.md): a 30 s window's encoder 360-400 ms by default,
275-290 ms with both thresholds at 1 GB; both bench clips 6.3-6.7 s against 5.3-5.9 s.

The price: memory freed by a prediction stays with the process (up to its peak use) for the next one
to reuse, which is what a model server wants. The setting is process-wide, so the predictor's setup
makes it, not the library code that a bench may run beside other engines.
"""

import ctypes

# mallopt() parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Serve requests under `limit` bytes from the heap and keep up to `limit` bytes of its free top.
    True when glibc took both settings; False elsewhere (musl, macOS), where nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
