"""The real coglet server for one predictor on one weights root, started and READY."""

from contextlib import contextmanager
from pathlib import Path

from cogkit.server import CogServer


@contextmanager
def serving(runner: str, weights_root: Path, setup_timeout: float = 120, **env):
    with CogServer(runner, env={"COGKIT_WEIGHTS_DIR": str(weights_root), **env},
                   setup_timeout=setup_timeout) as server:
        server.start().wait_ready()
        yield server
