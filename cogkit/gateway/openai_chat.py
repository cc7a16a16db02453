"""OpenAI-compatible chat on the gateway: `POST /v1/chat/completions` and the OpenAI fields of
`GET /v1/models`, mapped onto the LLM predictors, so the official `openai` client works against a
cogkit model by changing its base URL.

A chat completion is an ordinary prediction of the model (it shows up in `GET /v1/predictions`):
the last message is the `prompt`, earlier turns go to the predictor's `messages` input, and the
sampling parameters map onto its inputs. Sampling defaults are OpenAI's (temperature 1, top_p 1, no
top-k cut), not the predictor's. Parameters the predictors cannot honour are refused by name, never
ignored. Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

import json
import time
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cogkit.gateway.core import Gateway, GatewayError, ModelEntry
from cogkit.gateway.files import OWNER
from cogkit.gateway.store import TERMINAL
from cogkit.gateway.validation import read_json_object

# OpenAI request field -> the LLM predictor's input
RENAMED = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
           "top_p": "top_p", "top_k": "top_k", "seed": "seed"}
# accepted and without effect on the output
IGNORED = {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier", "n",
           "parallel_tool_calls", "stop", *RENAMED}
# accepted only at the value that changes nothing
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": None,
           "logit_bias": None, "tools": None, "tool_choice": None, "response_format": None}
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}  # OpenAI's sampling, whatever the predictor's


class ChatError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        # the openai client retries 5xx; a prediction that failed would only fail again
        return JSONResponse(body, status_code=self.status, headers={"x-should-retry": "false"})


def is_chat_model(entry: ModelEntry) -> bool:
    """An LLM predictor: a prompt in, a stream of text out, with a token budget."""
    inputs = entry.schema["components"]["schemas"]["Input"].get("properties", {})
    output = entry.schema["components"]["schemas"].get("Output", {})
    return (entry.iterator_output and output.get("items", {}).get("type") == "string"
            and {"prompt", "max_new_tokens"} <= set(inputs))


def model_object(entry: ModelEntry) -> dict:
    """OpenAI's model object (`id`, `object`, `created`, `owned_by`), for a chat model; {} otherwise."""
    if not is_chat_model(entry):
        return {}
    created = int(datetime.fromisoformat(entry.created_at.replace("Z", "+00:00")).timestamp())
    return {"id": entry.full_name, "object": "model", "created": created, "owned_by": OWNER}


def chat_entry(gateway: Gateway, model) -> ModelEntry:
    """`local/llm` or `llm`."""
    if not isinstance(model, str) or not model:
        raise ChatError(400, "model: required, the id of a model from GET /v1/models", "model")
    name = model.split("/", 1)[1] if model.startswith(f"{OWNER}/") else model
    entry = gateway.models.get(name)
    if entry is None or not is_chat_model(entry):
        known = ", ".join(e.full_name for e in gateway.models.values() if is_chat_model(e)) or "none"
        raise ChatError(404, f"The model `{model}` does not exist on this gateway; chat models: {known}",
                        "model", code="model_not_found")
    return entry


def message_text(message, i: int) -> tuple[str, str]:
    """(role, text) of one message; content may be a string or a list of text parts."""
    if not isinstance(message, dict):
        raise ChatError(400, f"messages[{i}]: must be an object with `role` and `content`", f"messages[{i}]")
    role = "system" if message.get("role") == "developer" else message.get("role")
    if role not in ("system", "user", "assistant"):
        raise ChatError(400, f"messages[{i}].role: {message.get('role')!r} is not supported here "
                             "(system, developer, user, assistant)", f"messages[{i}].role")
    if message.get("tool_calls"):
        raise ChatError(400, f"messages[{i}].tool_calls: tools are not supported by this model",
                        f"messages[{i}].tool_calls")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ChatError(400, f"messages[{i}].content: only text parts are supported by this model",
                            f"messages[{i}].content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ChatError(400, f"messages[{i}].content: must be a string or a list of text parts",
                        f"messages[{i}].content")
    return role, content


def prediction_input(entry: ModelEntry, body: dict) -> dict:
    """The predictor's input for a chat completion request."""
    for key, neutral in NEUTRAL.items():
        if body.get(key, neutral) not in (neutral, None) and not (key == "response_format" and
                                                                  body[key] == {"type": "text"}):
            raise ChatError(400, f"{key}: not supported by this model (leave it out)", key)
    unknown = sorted(set(body) - IGNORED - set(NEUTRAL))
    if unknown:
        raise ChatError(400, f"{unknown[0]}: unknown parameter", unknown[0])
    if body.get("n", 1) not in (1, None):
        raise ChatError(400, "n: this model returns one choice per request", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "messages: required, a non-empty list of messages", "messages")
    turns = [message_text(m, i) for i, m in enumerate(messages)]
    if turns[-1][0] != "user":
        raise ChatError(400, "messages: the last message must come from the user", "messages")
    accepted = set(entry.schema["components"]["schemas"]["Input"].get("properties", {}))
    inputs = {"prompt": turns[-1][1]}
    earlier = [{"role": role, "content": text} for role, text in turns[:-1]]
    if len(earlier) == 1 and earlier[0]["role"] == "system" and "system_prompt" in accepted:
        inputs["system_prompt"] = earlier[0]["content"]
    elif earlier and "messages" in accepted:
        inputs["messages"] = json.dumps(earlier)
    elif earlier:
        raise ChatError(400, f"messages: {entry.full_name} takes one user message (and a system message)",
                        "messages")
    for key, value in {**DEFAULTS, **{RENAMED[k]: v for k, v in body.items() if k in RENAMED}}.items():
        if key in accepted and value is not None:
            inputs[key] = value
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise ChatError(400, "stop: a string or a list of up to 4 non-empty strings", "stop")
        if any("," in s for s in stops):  # the predictor's stop_sequences input is comma-separated
            raise ChatError(400, "stop: sequences containing a comma are not supported by this model", "stop")
        if stops:
            inputs["stop_sequences"] = ",".join(stops)
    return inputs


# The LLM predictor's inputs an error may name, and the chat parameter each comes from.
CHAT_INPUTS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop_sequences", "system_prompt",
               "messages", "prompt")
INPUT_TO_PARAM = {"max_new_tokens": "max_tokens", "prompt": "messages", "system_prompt": "messages",
                  "stop_sequences": "stop", "messages": "messages"}


def as_chat_error(e: GatewayError) -> ChatError:
    """A gateway refusal in OpenAI's shape, naming the request's parameter instead of the input."""
    detail = e.detail
    param = None
    for name in CHAT_INPUTS:
        if detail.startswith(f"{name}:") or f"'{name}'" in detail:
            param = INPUT_TO_PARAM.get(name, name)
            if param != name:
                detail = detail.replace(name, param, 1)
            break
    status = 400 if e.status == 422 else e.status
    kind = "rate_limit_error" if e.status == 429 else "invalid_request_error"
    return ChatError(status, detail, param, kind)


def finish_reason(record: dict) -> str:
    return "length" if record.get("metrics", {}).get("stop_reason") == "length" else "stop"


def usage(record: dict) -> dict:
    metrics = record.get("metrics", {})
    prompt, completion = int(metrics.get("input_token_count", 0)), int(metrics.get("output_token_count", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(metrics.get("cached_input_token_count", 0))}}


def failure(record: dict) -> ChatError:
    error = record.get("error") or f"the prediction ended with status {record['status']}"
    refused = next((name for name in CHAT_INPUTS if error.startswith(f"{name}:")), None)
    if refused:  # the predictor refused what it was sent (a prompt past the context, a seed it cannot use)
        code = "context_length_exceeded" if "does not fit the model's context" in error else None
        return ChatError(400, f"{error} (prediction {record['id']})", INPUT_TO_PARAM.get(refused, refused),
                         code=code)
    return ChatError(500, f"{error} (prediction {record['id']})", kind="server_error")


def with_model_list(gateway: Gateway, replicate_page: dict) -> dict:
    """GET /v1/models answers both clients: Replicate's page (`results`) and OpenAI's list (`data`,
    the chat models)."""
    data = [model_object(e) for e in gateway.models.values() if is_chat_model(e)]
    return {**replicate_page, "object": "list", "data": data}


def routes(gateway: Gateway) -> list[Route]:
    async def chat_completions(request: Request) -> Response:
        try:
            try:
                body = await read_json_object(request)  # bounded, no NaN/Infinity, not too deep
            except GatewayError as e:
                raise as_chat_error(e) from None
            entry = chat_entry(gateway, body.get("model"))
            inputs = prediction_input(entry, body)
            try:
                record = gateway.create(entry, {"input": inputs}, None)
            except GatewayError as e:
                raise as_chat_error(e) from None
            head = {"id": f"chatcmpl-{record['id']}", "created": int(time.time()), "model": entry.full_name,
                    "system_fingerprint": entry.version_id[:12]}
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return StreamingResponse(stream(record["id"], head, include_usage), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
            while (record := await gateway.wait(record["id"], 60))["status"] not in TERMINAL:
                pass
            if record["status"] != "succeeded":
                raise failure(record)
            text = "".join(record["output"] or [])
            return JSONResponse({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                 "finish_reason": finish_reason(record), "logprobs": None}], "usage": usage(record)})
        except ChatError as e:
            return e.response()

    async def stream(pid: str, head: dict, include_usage: bool):
        def chunk(delta: dict, reason: str | None = None, **extra) -> str:
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
                    **({"usage": None} if include_usage else {}), **extra}
            return f"data: {json.dumps(body)}\n\n"

        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for _, event, data in gateway.stream_events(pid):
                if event == "output":
                    yield chunk({"content": data})
                elif event == "done":
                    break
                elif event is None:
                    yield ": keep-alive\n\n"
            finished = True
            record = gateway.snapshot(pid)
            if record["status"] != "succeeded":
                error = failure(record)
                yield f"data: {json.dumps({'error': {'message': error.message, 'type': error.kind}})}\n\n"
            else:
                yield chunk({}, finish_reason(record))
                if include_usage:  # OpenAI's last chunk: no choices, the usage
                    last = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(record)}
                    yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: stop generating for nobody
                gateway.cancel(pid)

    return [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
