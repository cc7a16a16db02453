"""`cogkit gateway`: Replicate's hosted HTTP API in front of the local models.

Each model in MODELS is served as `local/<name>`; the official `replicate` client works against it
with `Client(base_url=..., api_token=...)`. See README, section "Replicate HTTP API".
"""

import asyncio
import contextlib
import os
import secrets
import tempfile
import tomllib
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_DATA_DIR = Path(".cogkit") / "gateway"


def load_tokens(config_path: Path, extra: list[str]) -> tuple[list[str], str | None]:
    """Tokens from the config file, --token and COGKIT_GATEWAY_TOKENS; when there are none, a new
    one is written to the config file. Returns (tokens, the newly made token or None)."""
    tokens = list(extra)
    tokens += [t for t in os.environ.get("COGKIT_GATEWAY_TOKENS", "").split(",") if t.strip()]
    if config_path.is_file():
        with open(config_path, "rb") as f:
            config = tomllib.load(f)
        listed = config.get("tokens", [])
        if not isinstance(listed, list) or not all(isinstance(t, str) and t for t in listed):
            raise ValueError(f"{config_path}: `tokens` must be a list of non-empty strings")
        tokens += listed
    if tokens:
        return [t.strip() for t in tokens], None
    token = "r8_local_" + secrets.token_urlsafe(24)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=".config-")
    with os.fdopen(fd, "w") as f:
        f.write("# Bearer tokens accepted by `cogkit gateway` (Authorization: Bearer <token>)\n"
                f'tokens = ["{token}"]\n')
    os.replace(tmp, config_path)
    return [token], token


def model_catalog(names: list[str], skip_broken: bool = False, warn=print) -> dict:
    """ModelEntry per model name: its API schema (from the predictor, as `cog build` would) and version.
    A predictor that cannot be described is an error, or with `skip_broken` a warning (the gateway
    then serves the others)."""
    from cogkit.gateway.core import make_model_entry
    from cogkit.gateway.files import iso
    from cogkit.schema import load_predictor_info, openapi_schema
    from cogkit.weights import project_root
    from models import get_model

    root = project_root()
    catalog = {}
    for name in names:
        spec = get_model(name)
        try:
            schema = openapi_schema(load_predictor_info(spec.runner, root))
        except Exception as e:
            if not skip_broken:
                raise ValueError(f"cannot describe the {name} model's predictor {spec.runner}: {e}") from e
            warn(f"skipping {name}: cannot describe its predictor {spec.runner}: {e}")
            continue
        source = root / spec.runner.split(":", 1)[0]
        created = datetime.fromtimestamp(source.stat().st_mtime, timezone.utc) if source.exists() \
            else datetime.now(timezone.utc)
        catalog[name] = make_model_entry(spec, schema, iso(created), serving_concurrency(name, root))
    return catalog


def serving_concurrency(name: str, root: Path) -> int:
    """How many predictions the gateway hands the model's server at once: `concurrency.max` of its
    overlay (models/cog/NAME.yaml), or COG_MAX_CONCURRENCY from the gateway's environment, which
    overrides it for every model as it does for every server cogkit starts."""
    from cogkit.concurrency import model_concurrency

    override = os.environ.get("COG_MAX_CONCURRENCY", "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"COG_MAX_CONCURRENCY must be a positive integer, not {override!r}")
        return int(override)
    return model_concurrency(name, root)


def build_app(data_dir: Path, public_url: str, model_names: list[str], tokens: list[str],
              setup_timeout: float = 900, page_size: int = 100, max_queue: int = 1000,
              skip_broken: bool = False, warn=print, max_body: int | None = None):
    from starlette.applications import Starlette

    from cogkit.gateway.app import create_app
    from cogkit.gateway.core import Gateway

    catalog = model_catalog(model_names, skip_broken, warn)
    if not catalog:
        raise ValueError("no model to serve")
    gateway = Gateway(data_dir, public_url, catalog, setup_timeout=setup_timeout,
                      page_size=page_size, max_queue=max_queue)
    app: Starlette = create_app(gateway, tokens, **({"max_body": max_body} if max_body else {}))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        gateway.attach_loop(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, gateway.close)

    app.router.lifespan_context = lifespan
    return app, gateway
