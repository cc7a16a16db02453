"""What the gateway refuses before it stores or runs anything: oversized or malformed bodies,
numbers JSON does not have (NaN, Infinity), odd strings, and file inputs that are not http(s) URLs or
data: URIs. Every refusal is a GatewayError naming the field and the rule."""

import json
import math
import re
import urllib.parse

from starlette.responses import JSONResponse

from cogkit.gateway.errors import GatewayError
from cogkit.inputs import clip, data_uri_problem, why_not_a_file

MAX_BODY = 32 * 1024 * 1024  # bytes of a JSON request body (`cogkit gateway --max-body-mb`)
MAX_DEPTH = 32  # nesting of JSON arrays/objects in a request body


async def read_json_object(request) -> dict:
    """The request body as a JSON object (BodyLimit has bounded its size)."""
    try:
        body = json.loads(await request.body())
    except RecursionError:
        raise too_deep() from None
    except (ValueError, UnicodeDecodeError) as e:
        raise GatewayError(400, "Invalid JSON", f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "Invalid JSON", "the request body must be a JSON object")
    check_values(body)
    return body


def too_large(max_body: int) -> GatewayError:
    return GatewayError(413, "Content Too Large",
                        f"the request body is larger than {max_body} bytes; send big files with "
                        "POST /v1/files and pass their URL")


def too_deep() -> GatewayError:
    return GatewayError(400, "Invalid JSON", f"the request body is nested more than {MAX_DEPTH} levels deep")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before a route stores anything: at
    once when Content-Length says so, else as soon as the bytes read pass the limit (chunked bodies).
    Uploads (POST /v1/files) have their own, larger limit."""

    def __init__(self, app, limit: int = MAX_BODY, exempt: tuple = ("/v1/files",)):
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            error = too_large(self.limit)
            response = JSONResponse({"title": error.title, "detail": error.detail, "status": error.status},
                                    status_code=error.status, media_type="application/problem+json")
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large(self.limit)  # inside the route: answered as problem+json
            return message

        await self.app(scope, limited_receive, send)


def check_values(body: dict) -> None:
    """Walk the body without recursion: its depth, non-finite numbers (Python's json reads NaN,
    Infinity and 1e999), and strings that are not valid Unicode (lone surrogates from \\ud800)."""
    stack = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep()
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise GatewayError(422, "Input validation failed",
                               f"{where or 'body'}: {value} is not a number JSON allows; send a finite number")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise GatewayError(422, "Input validation failed",
                                   f"{where}: contains a lone UTF-16 surrogate, which is not valid Unicode") from None


def normalise_inputs(schema_properties: dict, inputs: dict) -> dict:
    """Integer inputs given as integral floats (1.0, -0.0) become ints, as the model servers take
    them; other floats stay, for the schema to refuse."""
    out = dict(inputs)
    for name, value in inputs.items():
        prop = schema_properties.get(name) or {}
        if integer_typed(prop) and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    return out


def integer_typed(prop: dict) -> bool:
    kind = prop.get("type")
    return kind == "integer" or (isinstance(kind, list) and "integer" in kind)


def file_typed(prop: dict) -> bool:
    return prop.get("format") == "uri" or (prop.get("type") == "array" and prop.get("items", {}).get("format") == "uri")


def check_file_inputs(schema_properties: dict, inputs: dict) -> None:
    """A file input is an http(s) URL (the gateway's own file URLs are such) or a well-formed data: URI;
    anything else (a path, file://, ftp://) is refused before anything is stored or opened."""
    for name, value in inputs.items():
        if not file_typed(schema_properties.get(name) or {}):
            continue
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if not isinstance(item, str):
                continue  # the schema refuses other types
            where = f"{name}[{i}]" if isinstance(value, list) else name
            if problem := file_input_problem(item):
                raise GatewayError(422, "Input validation failed", f"{where}: {problem}")


def file_input_problem(text: str) -> str | None:
    if text[:5].lower() == "data:":
        return data_uri_problem(text)
    if re.match(r"https?://", text, re.IGNORECASE):
        try:
            host = urllib.parse.urlsplit(text).hostname
        except ValueError:
            host = None
        return None if host else f"{clip(text)} is not a valid URL"
    return why_not_a_file(text)


def prepare_inputs(entry, inputs: dict) -> dict:
    """The inputs of a new prediction as they will be stored and run, or GatewayError."""
    properties = entry.schema["components"]["schemas"]["Input"].get("properties", {})
    check_values(inputs)
    inputs = normalise_inputs(properties, inputs)
    check_file_inputs(properties, inputs)
    return inputs
