"""The LLM predictor through the real coglet server, with the tiny model."""

import threading
import uuid

import pytest
import requests

from cogkit.server import CogServer, ServerError


def run(server, **inputs):
    return server.predict({"prompt": "Tell me about Paris", **inputs})


def text(result):
    assert result["status"] == "succeeded", result
    return "".join(result["output"])


@pytest.mark.parametrize("inputs, field, rule", [
    ({"max_new_tokens": 0}, "max_new_tokens", "minimum of 1"),
    ({"max_new_tokens": 100000}, "max_new_tokens", "maximum of 8192"),
    ({"temperature": -0.5}, "temperature", "minimum"),
    ({"top_p": 1.5}, "top_p", "maximum"),
    ({"top_k": -1}, "top_k", "minimum"),
    ({"seed": -3}, "seed", "minimum"),
    ({"max_new_tokens": "many"}, "max_new_tokens", "integer"),
    ({"prompt": ""}, "prompt", "shorter than 1"),
])
def test_bad_input_gets_422_naming_field_and_rule(llm_server, inputs, field, rule):
    resp = requests.post(f"{llm_server.url}/predictions", json={"input": {"prompt": "hi", **inputs}})
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"][-1] == field
    assert rule in detail["msg"]


def test_missing_prompt_is_422(llm_server):
    with pytest.raises(ServerError, match="prompt: Field required"):
        llm_server.predict({"max_new_tokens": 3})


def test_streams_several_output_events_before_completed(llm_server):
    events = list(llm_server.stream({"prompt": "Hello", "max_new_tokens": 40, "temperature": 1.0, "seed": 5}))
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "completed"
    outputs = [d["chunk"] for e, d in events if e == "output"]
    assert len(outputs) >= 5
    assert kinds.index("completed") > max(i for i, k in enumerate(kinds) if k == "output")
    assert "".join(outputs) == "".join(events[-1][1]["output"])


def test_metrics_are_recorded(llm_server):
    result = run(llm_server, max_new_tokens=20, temperature=1.0, seed=1)
    m = result["metrics"]
    assert m["input_token_count"] > 5
    assert 0 <= m["cached_input_token_count"] < m["input_token_count"]
    assert 1 <= m["output_token_count"] <= 20
    assert m["time_to_first_token"] > 0
    assert m["tokens_per_second"] >= 0
    assert m["seed"] == 1


def test_same_seed_same_text_different_seed_different_text(llm_server):
    a = text(run(llm_server, max_new_tokens=30, temperature=1.0, seed=42))
    b = text(run(llm_server, max_new_tokens=30, temperature=1.0, seed=42))
    c = text(run(llm_server, max_new_tokens=30, temperature=1.0, seed=43))
    assert a == b
    assert a != c


def test_no_seed_picks_one_and_records_it(llm_server):
    first = run(llm_server, max_new_tokens=20, temperature=1.0)
    replay = run(llm_server, max_new_tokens=20, temperature=1.0, seed=first["metrics"]["seed"])
    assert text(first) == text(replay)


def test_stop_sequence_ends_output_without_the_stop_text(llm_server):
    full = text(run(llm_server, max_new_tokens=60, temperature=1.0, seed=7))
    assert len(full) > 20
    stop = full[10:14]
    cut = run(llm_server, max_new_tokens=60, temperature=1.0, seed=7, stop_sequences=f"@@never@@,{stop}")
    assert text(cut) == full[:full.index(stop)]
    assert cut["metrics"]["stop_reason"] == "stop_sequence"


def test_system_prompt_goes_through_the_chat_template(llm_server):
    plain = run(llm_server, max_new_tokens=1, temperature=0)
    with_system = run(llm_server, max_new_tokens=1, temperature=0,
                      system_prompt="You answer in exactly one long and detailed paragraph, always.")
    assert with_system["metrics"]["input_token_count"] > plain["metrics"]["input_token_count"]


def test_prompt_longer_than_context_fails_clearly(llm_server):
    result = llm_server.predict({"prompt": "Paris " * 3000, "max_new_tokens": 5})
    assert result["status"] == "failed"
    assert "context of 2048 tokens" in result["error"]
    # The server is still usable afterwards.
    assert text(run(llm_server, max_new_tokens=3, temperature=0))


def test_cancel_stops_a_long_generation(endless_llm_server_single):
    llm_server = endless_llm_server_single  # no end-of-sequence token: it runs until cancelled
    prediction_id = uuid.uuid4().hex
    events = []

    def consume():
        for event in llm_server.stream({"prompt": "Go on", "max_new_tokens": 2000, "temperature": 1.0,
                                        "seed": 3}, prediction_id):
            events.append(event)

    reader = threading.Thread(target=consume)
    reader.start()
    while not any(e == "output" for e, _ in events) and reader.is_alive():
        threading.Event().wait(0.01)
    assert CogServer.cancel(llm_server, prediction_id) == 200
    reader.join(timeout=30)
    assert not reader.is_alive()
    final = events[-1]
    assert final[0] == "completed" and final[1]["status"] == "canceled"
    assert len(final[1]["output"] or []) < 2000
    # The next prediction runs normally.
    assert text(run(llm_server, max_new_tokens=3, temperature=0))


def test_openapi_schema_describes_every_input(llm_server):
    schema = requests.get(f"{llm_server.url}/openapi.json").json()
    props = schema["components"]["schemas"]["Input"]["properties"]
    assert set(props) == {"prompt", "system_prompt", "max_new_tokens", "temperature", "top_p", "top_k",
                          "stop_sequences", "seed", "messages"}
    assert all(p.get("description") for p in props.values())
    assert schema["components"]["schemas"]["Input"]["required"] == ["prompt"]


def test_failed_setup_reports_its_cause(tmp_path):
    with CogServer("predict.py:LLMRunner", env={"COGKIT_WEIGHTS_DIR": str(tmp_path)},
                   setup_timeout=60) as server:
        server.start()
        with pytest.raises(ServerError) as info:
            server.wait_ready()
    message = str(info.value)
    assert "SETUP_FAILED" in message
    assert "no built weights" in message and "cogkit build-weights llm" in message
    assert "Traceback" in message
