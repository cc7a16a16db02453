"""`cogkit snapshot MODEL`: bake the boot-time snapshot ahead of time, so it ships with the image."""


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("snapshot", help="record weights/MODEL/snapshot/KEY/ by booting the real server once")
    p.add_argument("model", help=model_help)
    p.add_argument("--setup-timeout", type=float, default=1800)
    p.set_defaults(func=cmd_snapshot)


def cmd_snapshot(args) -> int:
    from rich.console import Console

    from cogkit.server import CogServer
    from cogkit.snapshot import verify_snapshot
    from cogkit.weights import read_manifest, weights_dir
    from models import get_model

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    spec = get_model(args.model)
    folder = weights_dir(spec.name)
    read_manifest(folder)
    if not verify_snapshot(spec.name):
        console.print(f"{spec.name}: the snapshot for this machine is already recorded and intact")
        return 0
    with CogServer(spec.runner, env={"COGKIT_WEIGHTS_DIR": str(folder.parent), "COGKIT_SNAPSHOT": "1",
                                         "COGKIT_MODEL": spec.name},
                   setup_timeout=args.setup_timeout) as server, console.status(f"booting {spec.name}…"):
        server.start().wait_ready()
        for line in server.setup_log_lines():
            console.print(line, markup=False)
    problems = verify_snapshot(spec.name)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    return 1 if problems else 0
