"""OpenAI-compatible chat on `cogkit gateway`, with the official `openai` client (pinned in
requirements-dev.txt) against the real gateway over HTTPS, tiny LLM."""

import json
import ssl

import openai
import pytest
import requests

from tests.fixtures_gateway import TOKEN

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def chat(gateway):
    verify = ssl.create_default_context(cafile=str(gateway.cert[0])) if gateway.cert else True
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TOKEN, max_retries=0,
                         http_client=openai.DefaultHttpx2Client(verify=verify))


def test_models_list_and_retrieve_answer_both_clients(chat, gateway_client):
    listed = chat.models.list()
    assert [m.id for m in listed.data] == ["local/llm"]  # only the chat models
    assert listed.data[0].owned_by == "local" and listed.data[0].created > 1_600_000_000
    assert chat.models.retrieve("local/llm").id == "local/llm"
    # the same route still answers the replicate client
    assert "local/llm" in [f"{m.owner}/{m.name}" for m in gateway_client.models.list().results]


def test_chat_completion_with_usage_equals_the_prediction(chat, gateway_client):
    completion = chat.chat.completions.create(model="local/llm", messages=QUESTION, max_tokens=12, seed=4,
                                              temperature=0.8, top_p=0.9)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the same request as a Replicate prediction gives the same text: the mapping is exact
    direct = gateway_client.run("local/llm", input={"prompt": "Hello there", "system_prompt": "Be brief.",
                                                    "max_new_tokens": 12, "seed": 4, "temperature": 0.8,
                                                    "top_p": 0.9, "top_k": 0})
    assert choice.message.content == "".join(direct)
    prediction = gateway_client.predictions.get(completion.id.removeprefix("chatcmpl-"))
    assert prediction.status == "succeeded" and prediction.metrics["output_token_count"] == usage.completion_tokens
    if usage.completion_tokens == 12:
        assert choice.finish_reason == "length"


def test_chat_completion_streams(chat):
    kwargs = dict(model="local/llm", messages=QUESTION, max_tokens=30, seed=3, temperature=1.0)
    chunks = list(chat.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5  # token by token
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(pieces) - 1
    whole = chat.chat.completions.create(**kwargs)
    as_sse = lambda text: text.replace("\r\n", "\n").replace("\r", "\n")  # noqa: E731
    assert "".join(pieces) == as_sse(whole.choices[0].message.content)
    streamed = chunks[-1].usage
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (streamed.prompt_tokens,
                                                                          streamed.completion_tokens)
    # the same prompt again: all of it but its last token comes from the engine's prefix cache
    assert whole.usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens - 1


def test_stop_and_greedy_multi_turn(chat, gateway_client):
    greedy = dict(model="local/llm", max_tokens=20, temperature=0)
    full = chat.chat.completions.create(messages=QUESTION, **greedy).choices[0].message.content
    assert full == chat.chat.completions.create(messages=QUESTION, **greedy).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    if stop.strip() and "," not in stop:
        stopped = chat.chat.completions.create(messages=QUESTION, stop=[stop], **greedy).choices[0]
        assert stopped.finish_reason == "stop" and stopped.message.content == full[:full.index(stop)]
    # earlier turns reach the model through its `messages` input: a different conversation, other text
    turns = [*QUESTION, {"role": "assistant", "content": full}, {"role": "user", "content": "And then?"}]
    followed = chat.chat.completions.create(messages=turns, **greedy)
    direct = gateway_client.run("local/llm", input={"prompt": "And then?", "max_new_tokens": 20, "temperature": 0,
                                                    "top_p": 1.0, "top_k": 0,
                                                    "messages": json.dumps(turns[:-1])})
    assert followed.choices[0].message.content == "".join(direct)
    assert followed.usage.prompt_tokens > chat.chat.completions.create(messages=QUESTION, **greedy).usage.prompt_tokens


@pytest.mark.parametrize("change, param, error", [
    ({"max_tokens": 0}, "max_tokens", openai.BadRequestError),
    ({"n": 2}, "n", openai.BadRequestError),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", openai.BadRequestError),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", openai.BadRequestError),
    ({"stop": ["a,b"]}, "stop", openai.BadRequestError),
    ({"model": "local/nosuch"}, "model", openai.NotFoundError),
])
def test_refusals_name_the_parameter(chat, change, param, error):
    request = {"model": "local/llm", "messages": QUESTION, "max_tokens": 4, **change}
    with pytest.raises(error) as raised:
        chat.chat.completions.create(**request)
    assert raised.value.body["param"] == param and param in raised.value.body["message"]


def test_chat_needs_the_token(gateway):
    resp = requests.post(f"{gateway.url}/v1/chat/completions", json={"model": "local/llm", "messages": QUESTION},
                         verify=gateway.verify)
    assert resp.status_code == 401


def test_closing_a_stream_cancels_its_prediction(chat, gateway_client):
    from tests.test_gateway import LONG, wait_until

    stream = chat.chat.completions.create(model="local/llm", messages=[{"role": "user", "content": LONG["prompt"]}],
                                          max_tokens=LONG["max_new_tokens"], temperature=LONG["temperature"],
                                          seed=LONG["seed"], stream=True)
    first = [next(stream) for _ in range(4)]
    stream.close()
    prediction = gateway_client.predictions.get(first[0].id.removeprefix("chatcmpl-"))
    wait_until(lambda: prediction.reload() or prediction.status == "canceled", timeout=30, what="the cancel")
    assert len(prediction.output) < 8192
    assert gateway_client.run("local/llm", input={"prompt": "hi", "max_new_tokens": 2})  # the model is free again


def test_a_refused_prediction_is_one_400_naming_the_parameter_not_retried(gateway, chat, gateway_client):
    too_long = [{"role": "user", "content": "story " * 4000}]  # past the tiny model's 2048-token context
    retrying = chat.with_options(max_retries=2)
    before = {p.id for p in gateway_client.predictions.list().results}
    with pytest.raises(openai.BadRequestError) as raised:  # the request's fault, as OpenAI answers it
        retrying.chat.completions.create(model="local/llm", messages=too_long, max_tokens=4)
    assert "does not fit the model's context" in raised.value.message
    assert raised.value.body["param"] == "messages" and raised.value.body["code"] == "context_length_exceeded"
    made = [p for p in gateway_client.predictions.list().results if p.id not in before]
    assert len(made) == 1 and made[0].status == "failed"  # x-should-retry: false kept the client from retrying
    with pytest.raises(openai.APIError, match="does not fit the model's context"):
        list(chat.chat.completions.create(model="local/llm", messages=too_long, max_tokens=4, stream=True))


def test_bodies_that_are_not_json_objects_are_400_in_openai_shape(gateway):
    url, auth = f"{gateway.url}/v1/chat/completions", {"Authorization": f"Bearer {TOKEN}"}
    for body in (b"[1, 2]", b"{nope", b'{"model": "local/llm", "messages": [], "temperature": NaN}'):
        resp = requests.post(url, data=body, headers={**auth, "Content-Type": "application/json"},
                             verify=gateway.verify)
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
