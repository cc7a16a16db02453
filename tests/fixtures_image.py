"""Session fixtures for the image model: the tiny random Stable Diffusion, built once by the real
builder into a temporary weights root, and the real coglet server running ImageRunner on it."""

import pytest

from cogkit.build import build_weights
from cogkit.server import CogServer


@pytest.fixture(scope="session")
def image_weights_root(tmp_path_factory):
    """A weights root whose image/ holds builtin:tiny-sd in float32 (what a CPU runs)."""
    root = tmp_path_factory.mktemp("image-weights")
    build_weights("image", source="builtin:tiny-sd", dtype="float32", dest=root / "image", log=lambda *a: None)
    return root


@pytest.fixture(scope="session")
def image_server(image_weights_root):
    with CogServer("predict.py:ImageRunner", env={"COGKIT_WEIGHTS_DIR": str(image_weights_root)},
                   setup_timeout=120) as server:
        server.start().wait_ready()
        yield server
