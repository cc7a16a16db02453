"""Ship models to Replicate: `cogkit select`, `cogkit check`, `cogkit push`.

A push is select + checks + the Cog CLI's `cog push`, then the pushed schema is locked in
`models/locks/<model>.schema.json` so the next push can tell whether it breaks callers.
The checks, each explainable on its own:
  1. schema     cog.yaml passes Cog's JSON schema; `run:` is a class whose inputs all have descriptions
  2. compat     no breaking change against the locked schema of the last push
  3. weights    weights/<model>/ verifies against its manifest
  4. examples   the declared example predictions pass through the real local server
  5. snapshot   the boot snapshot is present and verifies (after the examples: a first boot writes it)
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCKS_DIR = Path("models") / "locks"
# r8.im/OWNER/NAME; any other registry host (e.g. a test registry on 127.0.0.1:5000) works the same way.
IMAGE_RE = re.compile(r"^(?P<registry>r8\.im|localhost(?::\d+)?|[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d+)?)/"
                      r"(?P<owner>[a-z0-9][a-z0-9_.-]*)/(?P<name>[a-z0-9][a-z0-9_.-]*)$")
INSTALL_COG = ("install the Cog CLI: sudo curl -o /usr/local/bin/cog -L "
               "https://github.com/replicate/cog/releases/latest/download/cog_$(uname -s)_$(uname -m) "
               "&& sudo chmod +x /usr/local/bin/cog   (or: brew install cog)")
INSTALL_DOCKER = "install and start Docker: https://docs.docker.com/engine/install/ (then `docker info` must work)"


def ship_root() -> Path:
    """The project being shipped: this checkout, or COGKIT_SHIP_ROOT (tests use a scratch copy)."""
    from cogkit.weights import project_root

    return Path(os.environ.get("COGKIT_SHIP_ROOT") or project_root())


# ---------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    ok: bool
    lines: list = field(default_factory=list)
    skipped: bool = False


@dataclass
class CheckRun:
    model: str
    checks: list = field(default_factory=list)
    schema: dict | None = None
    selection: object = None
    breaking: list = field(default_factory=list)  # Violations overridden by --allow-breaking

    @property
    def ok(self) -> bool:
        return all(c.ok or c.skipped for c in self.checks)


def lock_path(model: str, root: Path) -> Path:
    return root / LOCKS_DIR / f"{model}.schema.json"


def read_lock(model: str, root: Path) -> dict | None:
    path = lock_path(model, root)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def check_schema(model: str, root: Path, run: CheckRun) -> Check:
    from cogkit.schema import load_predictor_info, openapi_schema
    from cogkit.ship.config import ShipError, select

    try:
        run.selection = select(model, root, write=False)
        run.schema = openapi_schema(load_predictor_info(run.selection.config["run"], root))
    except ShipError as e:
        return Check("schema", False, str(e).splitlines())
    inputs = run.schema["components"]["schemas"]["Input"]["properties"]
    lines = [f"cog.yaml valid; run {run.selection.config['run']} has {len(inputs)} described inputs; "
             f"hardware {run.selection.hardware}", *run.selection.notes]
    return Check("schema", True, lines)


def check_compat(model: str, root: Path, run: CheckRun, allow_breaking: str | None) -> Check:
    from cogkit.ship.compat import breaking_changes

    if run.schema is None:
        return Check("compat", False, ["skipped: no schema"], skipped=True)
    lock = read_lock(model, root)
    if lock is None:
        return Check("compat", True, [f"no lock ({lock_path(model, root).relative_to(root)}): "
                                      "first push, nothing to compare"])
    changes = breaking_changes(lock["schema"], run.schema)
    against = f"the schema pushed to {lock.get('image')} (version {lock.get('version') or 'unknown'})"
    if not changes:
        return Check("compat", True, [f"compatible with {against}"])
    lines = [f"{len(changes)} breaking change(s) against {against}:", *(f"  {c}" for c in changes)]
    if allow_breaking:
        run.breaking = changes
        return Check("compat", True, lines + [f"allowed: {allow_breaking}"])
    return Check("compat", False, lines + ["fix them, or push with --allow-breaking REASON (recorded in the lock)"])


def check_weights(model: str) -> Check:
    from cogkit.weights import WeightsError, verify, weights_dir

    folder = weights_dir(model)
    try:
        problems = verify(folder)
    except WeightsError as e:
        return Check("weights", False, [str(e)])
    if problems:
        return Check("weights", False, [f"{folder}/{p}" for p in problems])
    return Check("weights", True, [f"{folder}: every file matches manifest.json"])


def check_examples(model: str, root: Path, run: CheckRun, weights_ok: bool, log) -> Check:
    from cogkit.ship.examples import declaration_problems, run_examples

    examples = run.selection.examples if run.selection else []
    if run.schema is None:
        return Check("examples", False, ["skipped: no schema"], skipped=True)
    if not examples:
        return Check("examples", False, [f"models/cog/{model}.yaml declares no examples: add at least one"])
    problems = declaration_problems(examples, run.schema, root)
    if problems:
        return Check("examples", False, problems)
    if not weights_ok:
        return Check("examples", False, ["not run: the weights check failed"])
    from cogkit.server import ServerError

    try:
        results = run_examples(run.selection.config["run"], examples, root, env={"COGKIT_MODEL": model}, log=log)
    except ServerError as e:
        return Check("examples", False, [f"the server did not start: {e}"])
    lines = [f"{'pass' if r.ok else 'FAIL'} {r.name} ({r.seconds:.1f}s): {r.detail}" for r in results]
    return Check("examples", all(r.ok for r in results), lines)


def check_snapshot(model: str, run: CheckRun) -> Check:
    if run.selection is not None and not run.selection.snapshot:
        return Check("snapshot", True, [f"models/cog/{model}.yaml says snapshot: false "
                                        "(its predictor keeps no boot snapshot)"], skipped=True)
    try:
        from cogkit.snapshot import verify_snapshot
    except ImportError:
        return Check("snapshot", True, ["skipped: this checkout has no cogkit.snapshot"], skipped=True)
    problems = verify_snapshot(model)
    if problems:
        return Check("snapshot", False, problems + [f"boot the model once (cogkit predict {model} …) to write it"])
    return Check("snapshot", True, ["present and intact for this machine's device"])


def run_checks(model: str, root: Path | None = None, allow_breaking: str | None = None,
               examples: bool = True, log=lambda *a: None) -> CheckRun:
    root = Path(root or ship_root())
    run = CheckRun(model)
    run.checks.append(check_schema(model, root, run))
    run.checks.append(check_compat(model, root, run, allow_breaking))
    weights = check_weights(model)
    run.checks.append(weights)
    if examples:
        run.checks.append(check_examples(model, root, run, weights.ok, log))
        run.checks.append(check_snapshot(model, run) if weights.ok else
                          Check("snapshot", False, ["not checked: the weights check failed"]))
    else:
        run.checks.append(Check("examples", True, ["skipped (--no-examples)"], skipped=True))
    return run


# ---------------------------------------------------------------- push


def parse_image(image: str) -> tuple[str, str]:
    match = IMAGE_RE.match(image or "")
    if not match:
        raise ValueError(f"destination {image!r} must look like r8.im/OWNER/NAME (or REGISTRY/OWNER/NAME; "
                         "lowercase letters, digits, '-', '_', '.'; no tag)")
    return match["owner"], match["name"]


def missing_tools() -> list[str]:
    """What stops `cog push` on this machine, each with how to fix it; empty when ready."""
    missing = []
    if shutil.which("cog") is None:
        missing.append(f"`cog` is not on PATH: {INSTALL_COG}")
    docker = shutil.which("docker")
    if docker is None:
        missing.append(f"`docker` is not on PATH: {INSTALL_DOCKER}")
    else:
        try:
            ok = subprocess.run([docker, "info"], capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            missing.append(f"no Docker engine answers `docker info`: {INSTALL_DOCKER}")
    return missing


def push_command(image: str) -> list[str]:
    return ["cog", "push", image]


def dockerignore_for(model: str, root: Path) -> str:
    """The project's .dockerignore plus the other models' weights, so each image carries only its own."""
    from models import MODELS

    path = root / ".dockerignore"
    text = path.read_text() if path.is_file() else ""
    others = [f"weights/{name}" for name in MODELS if name != model]
    if not others:
        return text
    return text.rstrip("\n") + f"\n# added by `cogkit push {model}` for the push only\n" + "\n".join(others) + "\n"


class PreparedTree:
    """cog.yaml and .dockerignore for one model while `cog push` runs; the originals come back after."""

    def __init__(self, model: str, root: Path, cog_yaml: str):
        self.root = root
        self.files = {root / "cog.yaml": cog_yaml, root / ".dockerignore": dockerignore_for(model, root)}
        self.saved: dict[Path, str | None] = {}

    def __enter__(self):
        from cogkit.ship.config import write_text_atomic

        for path, text in self.files.items():
            self.saved[path] = path.read_text() if path.is_file() else None
            write_text_atomic(path, text)
        return self

    def __exit__(self, *exc):
        from cogkit.ship.config import write_text_atomic

        for path, text in self.saved.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_text_atomic(path, text)


def latest_version(owner: str, name: str) -> tuple[str | None, str]:
    """The version `cog push` just made (it does not print it): `GET /v1/models/{owner}/{name}`."""
    token = os.environ.get("REPLICATE_API_TOKEN")
    if not token:
        return None, "REPLICATE_API_TOKEN is not set, so the version id was not looked up"
    import requests

    base = os.environ.get("REPLICATE_BASE_URL", "https://api.replicate.com").rstrip("/")
    try:
        resp = requests.get(f"{base}/v1/models/{owner}/{name}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        version = (resp.json().get("latest_version") or {}).get("id")
    except (requests.RequestException, ValueError) as e:
        return None, f"could not look up the version: {e}"
    return version, "" if version else "the model has no latest_version"


def git_commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def write_lock(model: str, root: Path, image: str, version: str | None, schema: dict,
               breaking: list, reason: str | None) -> Path:
    from cogkit.weights import write_json_atomic

    old = read_lock(model, root) or {}
    history = list(old.get("allowed_breaking", []))
    if breaking:
        history.append({"at": now(), "reason": reason, "changes": [str(c) for c in breaking],
                        "from_version": old.get("version")})
    lock = {"model": model, "image": image, "version": version, "pushed_at": now(),
            "git_commit": git_commit(root), "allowed_breaking": history, "schema": schema}
    path = lock_path(model, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, lock)
    return path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- output


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(out, text: str, style: str = "", lead: str = "") -> None:
    """Print plain text (never parsed as markup: messages quote user data), with an optional styled lead."""
    from rich.text import Text

    out.print(Text.assemble((lead, "bold red"), (text, style)) if lead else Text(text, style=style))


def print_checks(run: CheckRun, out) -> None:
    from rich.text import Text

    for number, check in enumerate(run.checks, 1):
        mark, style = ("skip", "yellow") if check.skipped else (("ok", "green") if check.ok else ("FAIL", "bold red"))
        out.print(Text.assemble(f"{run.model} check {number} ", (f"{check.name:<9}", "bold"), " ", (mark, style)))
        for line in check.lines:
            out.print(Text(f"    {line}"))


# ---------------------------------------------------------------- commands


def cmd_select(args) -> int:
    from cogkit.ship.config import ShipError, render, select

    from models import get_model

    args.model = get_model(args.model).name  # `asr` is `whisper`
    root = ship_root()
    try:
        selection = select(args.model, root, write=not args.stdout)
    except ShipError as e:
        say(console(), str(e), lead="error: ")
        return 1
    if args.stdout:
        sys.stdout.write(render(selection))
    else:
        say(console(), f"cog.yaml now builds {args.model} ({selection.config['run']}, hardware "
                        f"{selection.hardware}, gpu {bool(selection.config['build'].get('gpu'))})")
    for note in selection.notes:
        say(console(), f"note: {note}")
    return 0


def cmd_check(args) -> int:
    from models import get_model

    args.model = get_model(args.model).name
    out = console()
    run = run_checks(args.model, ship_root(), args.allow_breaking, examples=not args.no_examples,
                     log=lambda m: say(out, f"{args.model}: {m}", "dim"))
    print_checks(run, out)
    return 0 if run.ok else 1


def push_one(model: str, image: str, dry_run: bool, allow_breaking: str | None, out, options=None) -> int:
    from cogkit.ship import push_image
    from cogkit.ship.config import render

    owner, name = parse_image(image)
    root = ship_root()
    use_skopeo = bool(getattr(options, "skopeo", False))
    engine_name = getattr(options, "engine", None)
    base = getattr(options, "base", None)
    # With the Cog CLI and Docker: `cog push`, as always. Without the CLI: `cogkit build` + a push.
    missing = [] if getattr(options, "without_cog", False) else missing_tools()
    without_cog = bool(missing) or getattr(options, "without_cog", False)
    if without_cog:
        cannot = push_image.missing(use_skopeo, engine_name)
        missing = (missing + cannot) if cannot else []
    if missing and not dry_run:
        for line in missing:
            say(out, line, lead=f"cannot push {model}: ")
        say(out, "nothing was built or pushed; `--dry-run` runs the checks without these tools")
        return 1
    run = run_checks(model, root, allow_breaking, log=lambda m: say(out, f"{model}: {m}", "dim"))
    print_checks(run, out)
    if not run.ok:
        failed = ", ".join(c.name for c in run.checks if not (c.ok or c.skipped))
        say(out, f"the {failed} check(s) failed", lead=f"{model}: not pushed: ")
        return 1
    if without_cog:
        engine = engine_name or next((e for e in ("docker", "podman") if shutil.which(e)), "docker")
        plan = push_image.plan(model, image, engine, use_skopeo, base)
        if dry_run:
            print(f"# {model} -> {image} (dry run: nothing built or pushed; no Cog CLI needed)")
            print(f"cd {root} && {' '.join(plan.build)}")
            print(" ".join(plan.push))
            print(f"# then record the schema and version in {lock_path(model, root).relative_to(root)}")
            for line in missing:
                print(f"# a real push would stop here: {line}")
            return 0
        say(out, f"$ {' '.join(plan.build)} && {' '.join(plan.push)}")
        code = push_image.build_and_push(plan, base, engine_name, lambda m: say(out, m, "dim"), root)
        if code != 0:
            say(out, f"`{' '.join(plan.push)}` failed with exit code {code}; lock unchanged", lead=f"{model}: ")
            return 1
        return finish_push(model, image, owner, name, root, run, allow_breaking, out)
    command = push_command(image)
    cog_yaml = render(run.selection)
    if dry_run:
        print(f"# {model} -> {image} (dry run: nothing written, built or pushed)")
        print(f"# 1. write cog.yaml (cogkit select {model}):")
        print("\n".join(f"#    {line}" for line in cog_yaml.splitlines()))
        extra = dockerignore_for(model, root).split(f"# added by `cogkit push {model}` for the push only\n")
        if len(extra) == 2:
            print(f"# 2. add to .dockerignore for the push: {' '.join(extra[1].split())}")
        print(f"cd {root} && {' '.join(command)}")
        print(f"# 3. restore cog.yaml and .dockerignore; record the schema and version in "
              f"{lock_path(model, root).relative_to(root)}")
        for line in missing:
            print(f"# a real push would stop here: {line}")
        return 0
    say(out, f"$ {' '.join(command)}")
    with PreparedTree(model, root, cog_yaml):
        code = subprocess.run(command, cwd=root).returncode
    if code != 0:
        say(out, f"`{' '.join(command)}` failed with exit code {code}; lock unchanged", lead=f"{model}: ")
        return 1
    return finish_push(model, image, owner, name, root, run, allow_breaking, out)


def finish_push(model, image, owner, name, root, run, allow_breaking, out) -> int:
    if image.startswith("r8.im/"):
        version, why = latest_version(owner, name)
    else:
        version, why = None, "not Replicate's registry, so there is no version to look up"
    path = write_lock(model, root, image, version, run.schema, run.breaking, allow_breaking)
    say(out, f"{model}: pushed to {image}" + (f" version {version}" if version else f" ({why})")
              + f"; schema locked in {path.relative_to(root)} (commit it)")
    return 0


def destinations(args) -> list[tuple[str, str]]:
    from models import MODELS, get_model

    if args.all:
        if args.model:
            raise ValueError("--all pushes every model: give no MODEL or IMAGE, only --owner")
        pairs = []
        for model in MODELS:
            lock = read_lock(model, ship_root()) or {}
            image = f"r8.im/{args.owner}/{model}" if args.owner else lock.get("image")
            if not image:
                raise ValueError(f"no destination for {model}: pass --owner OWNER (pushes r8.im/OWNER/{model})")
            pairs.append((model, image))
        return pairs
    if not args.model or not args.image:
        raise ValueError("usage: cogkit push MODEL r8.im/OWNER/NAME [--dry-run], or cogkit push --all --owner OWNER")
    return [(get_model(args.model).name, args.image)]


def cmd_push(args) -> int:
    out = console()
    pairs = destinations(args)
    for model, image in pairs:
        parse_image(image)  # every destination is well-formed before anything runs
    for model, image in pairs:
        code = push_one(model, image, args.dry_run, args.allow_breaking, out, args)
        if code != 0:
            if len(pairs) > 1:
                say(out, "later models were not pushed", lead=f"stopped at {model}; ")
            return code
    return 0


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("select", help="write cog.yaml for one model (models/cog/base.yaml + its overlay)")
    p.add_argument("model", help=model_help)
    p.add_argument("--stdout", action="store_true", help="print the cog.yaml instead of writing it")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("check", help="the checks a push runs: schema, compat, weights, examples, snapshot")
    p.add_argument("model", help=model_help)
    p.add_argument("--allow-breaking", metavar="REASON", help="accept breaking changes against the lock")
    p.add_argument("--no-examples", action="store_true", help="skip the example predictions (no server)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("push", help="select, check, then `cog push` to r8.im/OWNER/NAME and lock the schema")
    p.add_argument("model", nargs="?", help=model_help)
    p.add_argument("image", nargs="?", help="r8.im/OWNER/NAME")
    p.add_argument("--all", action="store_true", help="every model, stopping at the first failure")
    p.add_argument("--owner", help="with --all: push each model to r8.im/OWNER/MODEL")
    p.add_argument("--dry-run", action="store_true", help="run the checks and print the commands only")
    p.add_argument("--allow-breaking", metavar="REASON", help="push despite breaking changes; recorded in the lock")
    p.add_argument("--without-cog", action="store_true",
                   help="`cogkit build` + a registry push even where the Cog CLI is installed (the default without it)")
    p.add_argument("--skopeo", action="store_true", help="without the Cog CLI: push with `skopeo copy`")
    p.add_argument("--engine", choices=["docker", "podman"], help="without the Cog CLI: the engine that builds")
    p.add_argument("--base", help="without the Cog CLI: the base image (see `cogkit build --base`)")
    p.set_defaults(func=cmd_push)
