"""CTranslate2 on CPU: its AVX-512 kernels where they were measured to pay.

CTranslate2 runs its own kernels (quantising activations for its int8 GEMMs, softmax, norms, the
beam search's bookkeeping) with AVX2 on every x86 CPU unless the environment variable
CT2_FORCE_CPU_ISA asks for more: "AVX512 can only be enabled with the environment variable at this
time" (its src/cpu/cpu_isa.cc; its GEMMs, oneDNN's, choose their own instructions). On a Zen 4
EPYC with one thread, AVX512 made Whisper tiny.en int8 ~10 % faster at beam 2 and SmolLM2 int8 ~8 % at
one stream, and left float32 as it was (README, Audio: "CTranslate2's AVX-512 kernels on AMD CPUs";
docs/llm-serving-measurements.md, stop 28). So cogkit asks for it, before CTranslate2 is imported, on
AMD CPUs that have the five AVX-512 subsets CTranslate2 checks for (it refuses the setting on a CPU
without them). Intel CPUs keep CTranslate2's choice: some lower their clock under AVX-512, and none
was measured here. A value already set (by the user, or `CT2_FORCE_CPU_ISA=AVX2` to compare) is left
alone.

The ISA is fixed the first time CTranslate2 asks for it, for the whole process: a benchmark's peer
in the same process (faster-whisper) or a subprocess given this environment runs with the same one.
"""

import functools
import os

ISA_VARIABLE = "CT2_FORCE_CPU_ISA"
# What CTranslate2's cpu_supports_avx512() requires.
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"})


def isa_for(vendor: str | None, flags: set[str]) -> str | None:
    """The ISA to ask CTranslate2 for on this CPU, or None to leave it its own choice."""
    if vendor == "AuthenticAMD" and AVX512_FLAGS <= flags:
        return "AVX512"
    return None


def cpu_vendor_and_flags(path: str = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """The first processor's vendor and flags (Linux); (None, set()) where there is no such file."""
    vendor, flags = None, None
    try:
        with open(path) as f:
            for line in f:  # stop at the first processor's flags: the file has one block per core
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return vendor, flags or set()


@functools.cache
def this_cpu_isa() -> str | None:
    """`isa_for` this machine's CPU, read once per process (setup and snapshot keys ask again)."""
    return isa_for(*cpu_vendor_and_flags())


def prefer_measured_isa(environ=os.environ) -> str | None:
    """Set CT2_FORCE_CPU_ISA where `isa_for` says, unless it is set; returns what it holds now."""
    if ISA_VARIABLE not in environ:
        isa = this_cpu_isa()
        if isa is not None:
            environ[ISA_VARIABLE] = isa
    return environ.get(ISA_VARIABLE)


def isa_in_use() -> str:
    """What CTranslate2 runs here, for snapshot keys and benchmark reports: the ISA asked for, or
    "default" (CTranslate2's own choice)."""
    return prefer_measured_isa() or "default"


def import_ctranslate2():
    """`import ctranslate2`, with the ISA chosen first (every cogkit module imports it through this)."""
    prefer_measured_isa()
    import ctranslate2

    return ctranslate2
