"""Replicate's HTTP API from both sides: `cogkit call` (a client of any Replicate-compatible API,
through the official `replicate` package) and `cogkit gateway` (that API in front of the local
models). Heavy imports happen inside the commands."""

import argparse
import sys

DEFAULT_PORT = 8390


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("call", help="run a model over Replicate's HTTP API (or a cogkit gateway)",
                       description="Runs OWNER/NAME[:VERSION] with the official replicate client. The token "
                                   "comes from REPLICATE_API_TOKEN and the API from REPLICATE_BASE_URL "
                                   "(default https://api.replicate.com).")
    p.add_argument("ref", metavar="OWNER/NAME[:VERSION]", nargs="?")
    p.add_argument("--deployment", metavar="OWNER/NAME",
                   help="run through this deployment (POST /v1/deployments/OWNER/NAME/predictions)")
    p.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE",
                   help="an input; KEY=@path uploads a file")
    p.add_argument("-o", "--output", help="where to write file outputs (default: output.<ext>)")
    p.add_argument("--stream", action="store_true", help="print output as it is generated")
    p.add_argument("--wait", type=int, metavar="N",
                   help="hold the create request up to N seconds (1-60, Prefer: wait=N) before polling")
    p.add_argument("--webhook", metavar="URL", help="ask the API to POST the prediction to URL")
    p.add_argument("--webhook-events", default=None, metavar="start,output,logs,completed",
                   help="which events the webhook gets (default: all)")
    p.add_argument("--cancel-after", metavar="DURATION", help="auto-cancel after e.g. 30s or 5m")
    p.add_argument("--hardware", help="price the prediction as this hardware SKU (e.g. gpu-l40s) "
                                      "when the API does not say which hardware ran it")
    p.add_argument("--json", action="store_true", help="print the final prediction as JSON")
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("gateway", help="serve the local models behind Replicate's HTTP API",
                       description="An HTTP server speaking Replicate's hosted API (predictions, models, "
                                   "files, streams, webhooks) for local/<model>, each model in its own "
                                   "coglet server started on first use.")
    p.add_argument("--models", default=None, help=f"comma-separated; default all ({model_help})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data", default=None, help="folder for the SQLite history, files and config "
                                                "(default .cogkit/gateway)")
    p.add_argument("--config", default=None, help="TOML file with `tokens = [...]` (default DATA/config.toml)")
    p.add_argument("--token", action="append", default=[], help="an accepted bearer token (repeatable)")
    p.add_argument("--public-url", help="the URL clients reach the gateway at (default from host and port)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="…and this key (PEM)")
    p.add_argument("--page-size", type=int, default=100, help="predictions per page of GET /v1/predictions")
    p.add_argument("--max-queue", type=int, default=1000,
                   help="predictions waiting per model before new ones get 429")
    p.add_argument("--max-body-mb", type=float, default=32,
                   help="largest JSON request body in MiB; bigger ones get 413 and nothing is stored")
    p.add_argument("--setup-timeout", type=float, default=900)
    p.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from cogkit.cli import UsageError, err
    from cogkit.gateway import DEFAULT_DATA_DIR, build_app, load_tokens
    from models import MODELS

    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UsageError(f"--models: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.page_size < 1 or args.max_queue < 1:
        raise UsageError("--page-size and --max-queue must be at least 1")
    if not args.max_body_mb > 0:
        raise UsageError("--max-body-mb must be positive")
    data_dir = Path(args.data) if args.data else DEFAULT_DATA_DIR
    config = Path(args.config) if args.config else data_dir / "config.toml"
    tokens, made = load_tokens(config, args.token)
    scheme = "https" if args.tls_cert else "http"
    public_url = args.public_url or f"{scheme}://{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # with the default (every model), one predictor that cannot even be imported should not take
    # the others down; models asked for by name must all work
    app, gateway = build_app(data_dir, public_url, names, tokens, args.setup_timeout, args.page_size,
                             args.max_queue, skip_broken=not args.models,
                             warn=lambda text: err.print(f"[yellow]{text}[/yellow]"),
                             max_body=int(args.max_body_mb * 1024 * 1024))
    names = [name for name in names if name in gateway.models]
    if gateway.interrupted:
        err.print(f"marked {gateway.interrupted} interrupted prediction(s) failed")
    if made:
        err.print(f"new API token written to {config}:\n  {made}")
    err.print(f"serving {', '.join('local/' + n for n in names)} at {public_url}  "
              f"(REPLICATE_BASE_URL={public_url}; data in {data_dir})")
    sys.stderr.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5,
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0


def _published_prices() -> dict:
    import json
    from pathlib import Path

    return json.loads((Path(__file__).with_name("data") / "replicate_hardware_prices.json").read_text())["per_second"]


# Replicate's published per-second prices (the dated file cogkit/data/replicate_hardware_prices.json),
# for the cost line; others are "unknown".
HARDWARE_PRICES = _published_prices()
TERMINAL = ("succeeded", "failed", "canceled", "aborted")


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    from cogkit.cli import UsageError

    model, _, version = ref.partition(":")
    owner, slash, name = model.partition("/")
    if not slash or not owner or not name or "/" in name or (":" in ref and not version):
        raise UsageError(f"{ref!r}: expected OWNER/NAME or OWNER/NAME:VERSION")
    return owner, name, version or None


def call_inputs(pairs: list[str], schema: dict | None) -> dict:
    """`-i key=value` typed by the version's schema when the API shares it; `key=@path` opens the file,
    which the replicate client uploads (POST /v1/files) and passes as its URL."""
    import json
    from pathlib import Path

    from cogkit.cli import UsageError, coerce, resolve_type

    props = required = None
    if schema:
        input_schema = schema.get("components", {}).get("schemas", {}).get("Input", {})
        props, required = input_schema.get("properties"), input_schema.get("required", [])
    inputs = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"malformed input {pair!r}: expected -i key=value or -i key=@file")
        if props is not None and key not in props:
            raise UsageError(f"unknown input {key!r}; this model takes: {', '.join(props)}")
        if raw.startswith("@"):
            path = Path(raw[1:])
            if not path.is_file():
                raise UsageError(f"input {key!r}: file {raw[1:]!r} does not exist")
            inputs[key] = path
        elif props is not None:
            inputs[key] = coerce(key, raw, resolve_type(props[key], schema))
        else:  # no schema: numbers, booleans and JSON as such, anything else as text
            try:
                inputs[key] = json.loads(raw)
            except ValueError:
                inputs[key] = raw
    missing = [name for name in (required or []) if name not in inputs]
    if missing:
        raise UsageError(f"missing required input {missing[0]!r} (-i {missing[0]}=...)")
    return inputs


def file_output_schema(schema: dict | None) -> bool | None:
    """Whether the output holds files (format uri), per the schema; None when unknown."""
    if not schema:
        return None
    output = schema.get("components", {}).get("schemas", {}).get("Output", {})
    return output.get("format") == "uri" or output.get("items", {}).get("format") == "uri"


def looks_like_file(value) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://", "data:"))


def download(client, url: str, dest_stem, index: int | None):
    """One file output to disk, written atomically; the extension from the name or content type."""
    import base64
    import mimetypes
    import os
    import re
    import tempfile
    from pathlib import Path

    dest_stem = Path(dest_stem)
    suffix = dest_stem.suffix
    stem = dest_stem.with_suffix("") if suffix else dest_stem
    if index is not None:
        stem = Path(f"{stem}.{index}")

    def target(content_type: str | None, name: str | None) -> Path:
        ext = suffix or (Path(name).suffix if name else "") or \
            (mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".bin")
        return stem.with_name(stem.name + ext)

    stem.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as f:
            if url.startswith("data:"):
                header, _, payload = url.partition(",")
                f.write(base64.b64decode(payload) if ";base64" in header else payload.encode())
                path = target(header[5:].split(";")[0], None)
            else:
                with client._client.stream("GET", url) as resp:
                    resp.raise_for_status()
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
                    disposition = resp.headers.get("content-disposition", "")
                    match = re.search(r'filename="?([^";]+)"?', disposition)
                    name = match.group(1) if match else Path(url.split("?", 1)[0]).name
                    path = target(resp.headers.get("content-type"), name if "." in name else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def save_file_outputs(client, output, out: str | None, files: bool | None):
    """File outputs downloaded next to -o (output.<ext>, output.N.<ext> for lists); others unchanged."""
    is_file = (lambda v: isinstance(v, str) and (v.startswith("data:") or (files and looks_like_file(v)))) \
        if files is not None else looks_like_file
    base = out or "output"
    if is_file(output):
        return download(client, output, base, None)
    if isinstance(output, list) and any(is_file(o) for o in output):
        return [download(client, o, base, i) if is_file(o) else o for i, o in enumerate(output)]
    if isinstance(output, dict):
        return {k: download(client, v, f"{base}.{k}", None) if is_file(v) else v for k, v in output.items()}
    return output


def cost_line(prediction: dict, hardware: str | None) -> str | None:
    seconds = (prediction.get("metrics") or {}).get("predict_time")
    if seconds is None:
        return None
    if hardware in HARDWARE_PRICES:
        return (f"predict time {seconds:.2f}s on {hardware} × ${HARDWARE_PRICES[hardware]:.6f}/s "
                f"≈ ${seconds * HARDWARE_PRICES[hardware]:.6f}")
    why = f"no published price for {hardware!r}" if hardware else "the hardware is unknown (pass --hardware)"
    return f"predict time {seconds:.2f}s; cost unknown: {why}"


class PredictionApi:
    """Predictions as plain JSON through the official client's authenticated transport.

    The client's Prediction model rejects status `aborted` (Replicate's status for a prediction
    that hit its deadline before it started), so prediction bodies are read as JSON here; files,
    input encoding and streams go through the client's own helpers."""

    def __init__(self, client):
        self.client = client

    def request(self, method: str, path: str, **kwargs) -> dict:
        return self.client._request(method, path, **kwargs).json()

    def model(self, owner: str, name: str) -> dict:
        return self.request("GET", f"/v1/models/{owner}/{name}")

    def version(self, owner: str, name: str, version: str) -> dict:
        return self.request("GET", f"/v1/models/{owner}/{name}/versions/{version}")

    def deployment(self, owner: str, name: str) -> dict:
        return self.request("GET", f"/v1/deployments/{owner}/{name}")

    def create(self, owner, name, version, body: dict, wait: int | None, cancel_after: str | None,
               deployment: str | None = None) -> dict:
        import httpx

        headers = {}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        if cancel_after:
            headers["Cancel-After"] = cancel_after
        timeout = httpx.Timeout(30.0, read=(wait or 0) + 30.0)
        if deployment:
            return self.request("POST", f"/v1/deployments/{deployment}/predictions", json=body,
                                headers=headers, timeout=timeout)
        if version:
            return self.request("POST", "/v1/predictions", json={"version": version, **body},
                                headers=headers, timeout=timeout)
        return self.request("POST", f"/v1/models/{owner}/{name}/predictions", json=body,
                            headers=headers, timeout=timeout)

    def get(self, prediction: dict) -> dict:
        return self.request("GET", prediction["urls"]["get"])

    def cancel(self, prediction: dict) -> dict:
        return self.request("POST", prediction["urls"]["cancel"])

    def wait(self, prediction: dict) -> dict:
        import time

        while prediction["status"] not in TERMINAL:
            time.sleep(self.client.poll_interval)
            prediction = self.get(prediction)
        return prediction

    def stream(self, prediction: dict, write) -> None:
        """Follow urls.stream, calling write(text) per output event; stops at `done` or `error`."""
        from replicate.stream import EventSource, ServerSentEvent

        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        with self.client._client.stream("GET", prediction["urls"]["stream"], headers=headers) as resp:
            resp.raise_for_status()
            try:
                for event in EventSource(self.client, resp, use_file_output=False):
                    if event.event == ServerSentEvent.EventType.OUTPUT:
                        write(event.data)
            except RuntimeError:
                pass  # an `error` event: the final prediction below says what failed


def cmd_call(args: argparse.Namespace) -> int:
    import json
    import os

    import httpx
    import replicate
    from replicate.exceptions import ReplicateError
    from replicate.helpers import encode_json
    from rich.text import Text

    from cogkit.cli import UsageError, err

    if bool(args.ref) == bool(args.deployment):
        raise UsageError("give OWNER/NAME[:VERSION] or --deployment OWNER/NAME (one of them)")
    if args.deployment:
        owner, name, version = parse_ref(args.deployment)
        if version:
            raise UsageError("--deployment OWNER/NAME: a deployment runs its own version; leave out :VERSION")
    else:
        owner, name, version = parse_ref(args.ref)
    token = os.environ.get("REPLICATE_API_TOKEN")
    if not token:
        raise UsageError("set REPLICATE_API_TOKEN to your API token (for a cogkit gateway: a token from its config)")
    if args.wait is not None and not 1 <= args.wait <= 60:
        raise UsageError("--wait must be between 1 and 60 seconds")
    events = [e.strip() for e in args.webhook_events.split(",")] if args.webhook_events else None
    base_url = os.environ.get("REPLICATE_BASE_URL") or None
    client = replicate.Client(api_token=token, base_url=base_url)
    api = PredictionApi(client)
    where = base_url or "https://api.replicate.com"
    prediction = deployment = None
    try:
        if args.deployment:
            # the deployment says which model and version it runs; the version gives the input schema
            deployment = api.deployment(owner, name)
            release = deployment.get("current_release") or {}
            owner, name = release["model"].split("/", 1)
            version = release["version"]
        model = api.model(owner, name)
        info = api.version(owner, name, version) if version else (model.get("latest_version") or {})
        schema = info.get("openapi_schema")
        inputs = encode_json(call_inputs(args.input, schema), client)
        body = {"input": inputs, **({"stream": True} if args.stream else {})}
        if args.webhook:
            body["webhook"] = args.webhook
            if events:
                body["webhook_events_filter"] = events
        prediction = api.create(owner, name, version, body, args.wait, args.cancel_after,
                                deployment=args.deployment)
        err.print(f"[dim]prediction {prediction['id']} ({prediction['status']}) on {where}[/dim]")
        streamed = False
        if args.stream and prediction["status"] not in TERMINAL and prediction.get("urls", {}).get("stream"):
            def write(text):
                if not args.json:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            api.stream(prediction, write)
            streamed = not args.json
        prediction = api.wait(api.get(prediction) if streamed else prediction)
    except KeyboardInterrupt:
        if prediction and prediction.get("status") not in TERMINAL:
            api.cancel(prediction)
            err.print(f"canceled {prediction['id']}")
        return 130
    except ReplicateError as e:
        err.print(Text.assemble(("error: ", "bold red"), f"{e.title or 'the API refused'} ({e.status}): {e.detail}"))
        return 1
    except httpx.HTTPError as e:
        err.print(Text.assemble(("error: ", "bold red"), f"cannot talk to {where}: {e}"))
        return 1
    if streamed:
        sys.stdout.write("\n")
    hardware = args.hardware or (deployment or {}).get("current_release", {}).get("configuration", {}).get(
        "hardware") or model.get("hardware")
    if prediction["status"] != "succeeded":
        err.print(Text.assemble((f"prediction {prediction['status']}: ", "bold red"),
                                str(prediction.get("error") or "")))
        if prediction.get("logs"):
            err.print(prediction["logs"].rstrip()[-2000:], markup=False)
        if args.json:
            print(json.dumps(prediction, indent=2))
        return 1
    output = save_file_outputs(client, prediction.get("output"), args.output, file_output_schema(schema))
    line = cost_line(prediction, hardware)
    if line:
        err.print(f"[dim]{line}[/dim]")
    if args.json:
        print(json.dumps({**prediction, "output": output}, indent=2))
    elif not streamed or output != prediction.get("output"):
        if isinstance(output, list) and all(isinstance(o, str) for o in output) and output == prediction["output"]:
            print("".join(output) if not file_output_schema(schema) else "\n".join(output))
        else:
            print(output if isinstance(output, str) else json.dumps(output, indent=2))
    return 0
