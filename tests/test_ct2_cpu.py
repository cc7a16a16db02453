"""CTranslate2's CPU instruction set (cogkit/ct2_cpu.py): AVX-512 asked for on AMD CPUs that have it,
CTranslate2's own choice elsewhere, a value already set left alone; and CTranslate2 really runs what
was asked for when a cogkit module loads a model."""

import os
import subprocess
import sys

from cogkit.ct2_cpu import AVX512_FLAGS, ISA_VARIABLE, cpu_vendor_and_flags, isa_for, prefer_measured_isa
from cogkit.weights import project_root
from tests.fixtures_audio import real_whisper_weights  # noqa: F401 (fixture)


def test_avx512_only_on_amd_cpus_with_every_subset_ctranslate2_checks():
    assert isa_for("AuthenticAMD", set(AVX512_FLAGS) | {"avx2", "fma"}) == "AVX512"
    for missing in AVX512_FLAGS:
        assert isa_for("AuthenticAMD", set(AVX512_FLAGS) - {missing}) is None, missing
    assert isa_for("GenuineIntel", set(AVX512_FLAGS)) is None  # CTranslate2's choice, not measured here
    assert isa_for(None, set()) is None


def test_cpuinfo_is_read_for_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 " + " ".join(sorted(AVX512_FLAGS))
                    + "\n\nprocessor\t: 1\nvendor_id\t: Other\nflags\t\t: fpu\n")
    assert cpu_vendor_and_flags(str(info)) == ("AuthenticAMD", {"fpu", "avx2", *AVX512_FLAGS})
    assert cpu_vendor_and_flags(str(tmp_path / "missing")) == (None, set())


def test_a_value_already_set_is_left_alone():
    env = {ISA_VARIABLE: "AVX2"}
    assert prefer_measured_isa(env) == "AVX2" and env == {ISA_VARIABLE: "AVX2"}
    env = {}
    expected = isa_for(*cpu_vendor_and_flags())
    assert prefer_measured_isa(env) == expected
    assert env == ({ISA_VARIABLE: expected} if expected else {})


def test_whisper_loaded_by_cogkit_runs_the_chosen_isa(real_whisper_weights):  # noqa: F811
    """CTranslate2 logs the ISA it selected (CT2_VERBOSE=1) when the model loads: the one cogkit asked
    for on this machine, or, where cogkit asks for none, not AVX-512 (CTranslate2 never picks it itself)."""
    env = {k: v for k, v in os.environ.items() if k != ISA_VARIABLE}
    script = ("import sys\nfrom models.audio.whisper_runtime import ModelLoad\n"
              "ModelLoad(sys.argv[1], 'cpu', 'int8', 1).ct2.result()\n")
    out = subprocess.run([sys.executable, "-c", script, str(real_whisper_weights)], cwd=project_root(),
                         env={**env, "CT2_VERBOSE": "1"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = isa_for(*cpu_vendor_and_flags())
    if expected:
        assert f"Selected ISA: {expected}" in out.stderr, out.stderr[-2000:]
    else:
        assert "Selected ISA: AVX512" not in out.stderr and "Selected ISA:" in out.stderr, out.stderr[-2000:]
