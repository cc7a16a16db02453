"""Example predictions declared per model (models/cog/<model>.yaml `examples:`), run through the real
local Cog server, each output held to its declared expectations.

An example is `{name, input, expect}`. `input` values of the form `@path` are files relative to the
project root (sent as data: URIs). `expect` keys:

  equals: TEXT          the whole text output (a streamed output is joined first)
  contains: TEXT|[...]  each text occurs in the output
  not_contains: TEXT|[...]
  regex: PATTERN        re.search matches (DOTALL)
  image: {width, height, format}      a file output that is an image of that size (format optional)
  audio: {min_seconds, max_seconds}   a WAV file output whose duration lies within the range
  field: NAME / index: N              look inside a dict / list output first
"""

import base64
import io
import re
import wave
from dataclasses import dataclass
from pathlib import Path

from cogkit.ship.config import ShipError

EXAMPLE_KEYS = {"name", "input", "expect"}
EXPECT_KEYS = {"equals", "contains", "not_contains", "regex", "image", "audio", "field", "index"}


@dataclass
class ExampleResult:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


def declaration_problems(examples: list, schema: dict, root: Path | None = None) -> list[str]:
    """Static problems in the declarations: unknown keys, inputs the model does not take, missing
    files, bad regexes."""
    from cogkit.cli import resolve_type

    inputs = schema["components"]["schemas"]["Input"]
    props, required = inputs.get("properties", {}), inputs.get("required", [])
    problems = []
    for i, example in enumerate(examples):
        label = f"example {i + 1}" + (f" ({example.get('name')})" if isinstance(example, dict) and example.get("name") else "")
        if not isinstance(example, dict):
            problems.append(f"{label}: must be a mapping with name, input, expect")
            continue
        unknown = sorted(set(example) - EXAMPLE_KEYS) + sorted(set(example.get("expect") or {}) - EXPECT_KEYS)
        problems += [f"{label}: unknown key {key!r}" for key in unknown]
        if not example.get("expect"):
            problems.append(f"{label}: declares no expectation (expect: equals/contains/regex/image/audio)")
        given = example.get("input") or {}
        problems += [f"{label}: input {key!r} is not one of the model's inputs ({', '.join(props)})"
                     for key in given if key not in props]
        problems += [f"{label}: required input {key!r} is missing" for key in required if key not in given]
        for key, value in given.items():
            if key in props and isinstance(value, str) and value.startswith("@"):
                if resolve_type(props[key], schema).get("format") != "uri":
                    problems.append(f"{label}: input {key!r} is not a file input but is given {value!r}")
                elif root is not None and not (Path(root) / value[1:]).is_file():
                    problems.append(f"{label}: input {key!r}: file {value[1:]} does not exist")
        pattern = (example.get("expect") or {}).get("regex")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(f"{label}: regex {pattern!r} does not compile: {e}")
    return problems


def resolve_inputs(inputs: dict, root: Path) -> dict:
    from cogkit.cli import file_to_data_uri

    out = {}
    for key, value in inputs.items():
        if isinstance(value, str) and value.startswith("@"):
            path = root / value[1:]
            out[key] = file_to_data_uri(key, str(path))
        else:
            out[key] = value
    return out


def normalise_output(output, schema: dict):
    """A streamed text output (ConcatenateIterator) arrives as a list of chunks: join it."""
    spec = schema["components"]["schemas"].get("Output", {})
    if (isinstance(output, list) and spec.get("x-cog-array-display") == "concatenate"
            and all(isinstance(chunk, str) for chunk in output)):
        return "".join(output)
    return output


def data_uri_bytes(value) -> bytes:
    if not (isinstance(value, str) and value.startswith("data:")):
        raise AssertionError(f"expected a file output, got {short(value)}")
    header, _, payload = value.partition(",")
    return base64.b64decode(payload) if ";base64" in header else payload.encode()


def short(value, limit: int = 160) -> str:
    """A readable, bounded rendering of an output; files show as `<image/png, 1234 bytes>`."""
    if isinstance(value, list) and any(isinstance(v, str) and v.startswith("data:") for v in value):
        return "[" + ", ".join(short(v, limit) for v in value) + "]"
    if isinstance(value, str) and value.startswith("data:"):
        header, _, payload = value.partition(",")
        size = len(payload) * 3 // 4 if ";base64" in header else len(payload)
        return f"<{header[5:].split(';')[0]}, ~{size} bytes>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def select_output(output, expect: dict):
    """The part of the output an expectation looks at (`field`, then `index`); a text file output
    (a data: URI) is read as its text when a text expectation applies."""
    if "field" in expect:
        if not isinstance(output, dict) or expect["field"] not in output:
            raise AssertionError(f"output has no field {expect['field']!r}: {short(output)}")
        output = output[expect["field"]]
    if "index" in expect:
        if not isinstance(output, list) or len(output) <= expect["index"]:
            raise AssertionError(f"output has no item {expect['index']}: {short(output)}")
        output = output[expect["index"]]
    if TEXT_CHECKS & set(expect) and isinstance(output, str) and output.startswith("data:"):
        try:
            output = data_uri_bytes(output).decode("utf-8")
        except UnicodeDecodeError:
            raise AssertionError(f"expected text, got a binary file {short(output)}") from None
    return output


TEXT_CHECKS = {"equals", "contains", "not_contains", "regex"}


def expectation_failures(output, expect: dict) -> list[str]:
    """Each way `output` misses `expect`; empty when it meets all of them."""
    try:
        output = select_output(output, expect)
    except AssertionError as e:
        return [str(e)]
    if TEXT_CHECKS & set(expect) and not isinstance(output, str):
        return [f"expected text, got {short(output)}"]
    failures = []
    if "equals" in expect and output != expect["equals"]:
        failures.append(f"output {short(output)} is not exactly {short(expect['equals'])}")
    for text in as_list(expect.get("contains", [])):
        if text not in output:
            failures.append(f"output {short(output)} does not contain {text!r}")
    for text in as_list(expect.get("not_contains", [])):
        if text in output:
            failures.append(f"output {short(output)} contains {text!r}")
    if "regex" in expect and not re.search(expect["regex"], output, re.DOTALL):
        failures.append(f"output {short(output)} does not match /{expect['regex']}/")
    try:
        if "image" in expect:
            failures += image_failures(data_uri_bytes(output), expect["image"])
        if "audio" in expect:
            failures += audio_failures(data_uri_bytes(output), expect["audio"])
    except AssertionError as e:
        failures.append(str(e))
    return failures


def image_failures(data: bytes, want: dict) -> list[str]:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Exception as e:
        return [f"output is not an image: {e}"]
    failures = []
    if "width" in want and image.width != want["width"]:
        failures.append(f"image width {image.width} is not {want['width']}")
    if "height" in want and image.height != want["height"]:
        failures.append(f"image height {image.height} is not {want['height']}")
    if "format" in want and (image.format or "").lower() != str(want["format"]).lower():
        failures.append(f"image format {image.format} is not {want['format']}")
    return failures


def audio_seconds(data: bytes) -> float:
    """Duration of a WAV file (stdlib), or of FLAC/OGG/MP3 when the soundfile package is installed."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError) as wav_error:
        try:
            import soundfile
        except ImportError:
            raise ValueError(f"not a WAV file ({wav_error}) and soundfile is not installed") from None
        try:
            return soundfile.info(io.BytesIO(data)).duration
        except Exception as e:  # libsndfile's own error types
            raise ValueError(f"not an audio file: {e}") from None


def audio_failures(data: bytes, want: dict) -> list[str]:
    try:
        seconds = audio_seconds(data)
    except ValueError as e:
        return [f"output is {e}"]
    low, high = want.get("min_seconds", 0), want.get("max_seconds", float("inf"))
    if not low <= seconds <= high:
        return [f"audio lasts {seconds:.2f}s, outside {low}–{high}s"]
    return []


def run_examples(runner: str, examples: list, root: Path, env: dict | None = None,
                 setup_timeout: float = 600, log=lambda *a: None) -> list[ExampleResult]:
    """Boot one real coglet server for `runner` and send every example through it, in order."""
    import time

    from cogkit.cli import UsageError
    from cogkit.server import CogServer, ServerError

    results = []
    with CogServer(runner, env=env or {}, setup_timeout=setup_timeout, root=root) as server:
        started = time.monotonic()
        server.start().wait_ready()
        log(f"server ready in {time.monotonic() - started:.1f}s")
        for i, example in enumerate(examples):
            name = example.get("name") or f"example {i + 1}"
            started = time.monotonic()
            try:
                result = server.predict(resolve_inputs(example.get("input") or {}, root))
            except (ServerError, ShipError, UsageError) as e:
                results.append(ExampleResult(name, False, str(e), time.monotonic() - started))
                continue
            seconds = time.monotonic() - started
            if result.get("status") != "succeeded":
                results.append(ExampleResult(name, False, f"prediction {result.get('status')}: "
                                             f"{result.get('error') or ''}".strip(), seconds))
                continue
            output = normalise_output(result.get("output"), server.schema)
            failures = expectation_failures(output, example["expect"])
            if failures:
                detail = "; ".join(failures)
            else:
                detail = f"output {short(select_output(output, example['expect']), 80)}"
            results.append(ExampleResult(name, not failures, detail, seconds))
    return results
