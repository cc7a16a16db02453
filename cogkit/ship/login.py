"""`cogkit login`: Cog's login flow for r8.im, without the Cog CLI.

Replicate's registry takes the *CLI login token* from https://replicate.com/auth/token, not an API
token (`r8_…`): the token is checked with a form POST of `token=…` to
`https://r8.im/cog/v1/verify-token`, which answers the username, and then stored as registry
credentials for r8.im (username + token), where `docker push` and `skopeo copy` find them.
"""

import base64
import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import requests

REGISTRY = "r8.im"
API_TOKEN_MESSAGE = ("that looks like a Replicate API token, not a CLI auth token. Please fetch a token "
                     "from https://replicate.com/auth/token to log in")


class LoginError(Exception):
    pass


def with_scheme(registry: str) -> str:
    return registry if "://" in registry else f"https://{registry}"


def host_of(registry: str) -> str:
    return registry.split("://", 1)[-1].rstrip("/")


def check_token_format(token: str) -> None:
    if not token:
        raise LoginError("the token is empty")
    if token.startswith("r8_"):
        raise LoginError(API_TOKEN_MESSAGE)


def token_url(registry: str) -> str:
    resp = requests.get(f"{with_scheme(registry)}/cog/v1/display-token-url", timeout=30)
    if resp.status_code == 404:
        raise LoginError(f"{host_of(registry)} is not the Replicate registry; log in with `docker login`")
    resp.raise_for_status()
    return resp.json()["url"]


def verify_token(registry: str, token: str) -> str:
    """The username the token belongs to."""
    try:
        resp = requests.post(f"{with_scheme(registry)}/cog/v1/verify-token", data={"token": token}, timeout=30)
    except requests.RequestException as e:
        raise LoginError(f"could not verify the token with {host_of(registry)}: {e}") from None
    if resp.status_code == 404:
        raise LoginError("user does not exist (the token is not valid)")
    if resp.status_code != 200:
        raise LoginError(f"could not verify the token: {host_of(registry)} answered HTTP {resp.status_code}")
    username = (resp.json() or {}).get("username")
    if not username:
        raise LoginError(f"{host_of(registry)} did not name the token's user")
    return username


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def store_credentials(registry: str, username: str, token: str) -> str:
    """Docker's config (read by docker, podman and skopeo); through `docker login` when the config
    names a credential helper, which then keeps the secret."""
    host = host_of(registry)
    path = docker_config_path()
    config = json.loads(path.read_text()) if path.is_file() else {}
    helper = config.get("credsStore") or (config.get("credHelpers") or {}).get(host)
    if helper:
        proc = subprocess.run(["docker", "login", "--username", username, "--password-stdin", host],
                              input=token, text=True, capture_output=True)
        if proc.returncode != 0:
            raise LoginError(f"`docker login {host}` failed: {proc.stderr.strip()}")
        return f"docker-credential-{helper}"
    config.setdefault("auths", {})[host] = {"auth": base64.b64encode(f"{username}:{token}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return str(path)


def login(registry: str, token: str) -> tuple[str, str]:
    token = token.strip()
    check_token_format(token)
    username = verify_token(registry, token)
    return username, store_credentials(registry, username, token)


def cmd_login(args) -> int:
    from rich.console import Console

    out = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.token_stdin:
            token = sys.stdin.read()
        else:
            url = token_url(args.registry)
            out.print(f"Sign in at {url}, copy the token from that page, paste it here and press enter.",
                      markup=False)
            token = getpass.getpass("Token: ")
        username, where = login(args.registry, token)
    except (LoginError, requests.RequestException) as e:
        out.print(f"[bold red]error:[/bold red] {e}")
        return 1
    out.print(f"You've successfully authenticated as {username}! You can now use the "
              f"'{host_of(args.registry)}' registry (credentials in {where}).", markup=False)
    return 0


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("login", help="log in to Replicate's registry (r8.im) like `cog login`")
    p.add_argument("--token-stdin", action="store_true",
                   help="read the CLI token (https://replicate.com/auth/token, not an r8_ API token) from stdin")
    p.add_argument("--registry", default=os.environ.get("COG_REGISTRY_HOST", REGISTRY),
                   help="registry host (default r8.im)")
    p.set_defaults(func=cmd_login)
