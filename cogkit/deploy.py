"""`cogkit deploy MODEL`: create or update a Replicate deployment of the model's latest pushed
version (from its lock, models/locks/MODEL.schema.json), through the official `replicate` client.

The token comes from REPLICATE_API_TOKEN and the API from REPLICATE_BASE_URL, so the same command
deploys on Replicate and on a local `cogkit gateway`.
"""

import argparse
import json

# Replicate's bounds (OpenAPI: deployments.create)
MIN_INSTANCES, MAX_INSTANCES = (0, 5), (0, 20)


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("deploy", help="create or update a Replicate deployment of the model's pushed version",
                       description="Deploys the version recorded in models/locks/MODEL.schema.json by the last "
                                   "`cogkit push` as OWNER/NAME with the given hardware and instance limits.")
    p.add_argument("model", help=model_help)
    p.add_argument("--owner", required=True, help="the account that owns the deployment (the token's account)")
    p.add_argument("--name", help="deployment name (default: the model's name)")
    p.add_argument("--hardware", help="hardware SKU, e.g. gpu-t4 (default: the model's, from models/cog)")
    p.add_argument("--min-instances", type=int, default=0, help="instances kept up while idle (0-5, default 0)")
    p.add_argument("--max-instances", type=int, default=1, help="most instances at once (0-20, default 1)")
    p.add_argument("--json", action="store_true", help="print the deployment as JSON")
    p.set_defaults(func=cmd_deploy)


def pushed_version(model: str) -> tuple[str, str]:
    """(owner/name, version id) of the last push, from the model's lock."""
    from cogkit.cli import UsageError
    from cogkit.ship.commands import lock_path, parse_image, read_lock, ship_root

    root = ship_root()
    lock = read_lock(model, root)
    where = lock_path(model, root)
    if lock is None:
        raise UsageError(f"{model} has not been pushed ({where} does not exist): "
                         f"run `cogkit push {model} r8.im/OWNER/NAME` first")
    if not lock.get("version"):
        raise UsageError(f"{where} has no version id (REPLICATE_API_TOKEN was not set when it was pushed); "
                         "push again with the token set")
    owner, name = parse_image(lock["image"])
    return f"{owner}/{name}", lock["version"]


def check_limits(args) -> None:
    from cogkit.cli import UsageError

    for flag, value, (low, high) in (("--min-instances", args.min_instances, MIN_INSTANCES),
                                     ("--max-instances", args.max_instances, MAX_INSTANCES)):
        if not low <= value <= high:
            raise UsageError(f"{flag} must be from {low} to {high} (Replicate's limit)")
    if args.min_instances > args.max_instances:
        raise UsageError("--min-instances must not be more than --max-instances")


def cmd_deploy(args: argparse.Namespace) -> int:
    import os

    import replicate
    from replicate.exceptions import ReplicateError
    from rich.text import Text

    from cogkit.cli import UsageError, err
    from models import get_model

    spec = get_model(args.model)
    check_limits(args)
    model, version = pushed_version(spec.name)
    token = os.environ.get("REPLICATE_API_TOKEN")
    if not token:
        raise UsageError("set REPLICATE_API_TOKEN to your API token (for a cogkit gateway: a token from its config)")
    base_url = os.environ.get("REPLICATE_BASE_URL") or None
    client = replicate.Client(api_token=token, base_url=base_url)
    name = args.name or spec.name
    config = {"version": version, "hardware": args.hardware or spec.hardware,
              "min_instances": args.min_instances, "max_instances": args.max_instances}
    try:
        try:
            client.deployments.get(f"{args.owner}/{name}")
            exists = True
        except ReplicateError as e:
            if e.status != 404:
                raise
            exists = False
        if exists:
            deployment = client.deployments.update(args.owner, name, **config)
        else:
            deployment = client.deployments.create(name=name, model=model, **config)
            if deployment.owner != args.owner:
                err.print(Text(f"note: the API created {deployment.owner}/{name}: deployments belong to the "
                               f"token's account, not to --owner {args.owner}", style="yellow"))
    except ReplicateError as e:
        err.print(Text.assemble(("error: ", "bold red"), f"{e.title or 'the API refused'} ({e.status}): {e.detail}"))
        return 1
    release = deployment.current_release
    conf = release.configuration
    err.print(f"{'updated' if exists else 'created'} deployment {deployment.owner}/{deployment.name}: "
              f"{release.model}:{release.version[:12]} on {conf.hardware}, {conf.min_instances}-{conf.max_instances} "
              f"instances (release {release.number})")
    err.print(f"[dim]run it: cogkit call --deployment {deployment.owner}/{deployment.name} -i KEY=VALUE[/dim]")
    if args.json:
        print(json.dumps(deployment.dict(), indent=2, default=str))
    return 0
