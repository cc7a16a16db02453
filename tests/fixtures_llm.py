"""Session fixtures for the LLM batching tests: the tiny model without an end-of-sequence token, so
that every generation runs to its token budget (long streams to cancel, equal lengths to compare)."""

import json
import shutil

import pytest

from cogkit.build import build_weights
from tests.servers import serving


@pytest.fixture(scope="session")
def endless_weights_root(tmp_path_factory, tiny_llm_source):
    source = tmp_path_factory.mktemp("endless-source") / "tiny"
    shutil.copytree(tiny_llm_source, source)
    for name in ("config.json", "generation_config.json"):
        path = source / name
        if path.is_file():
            path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": None}))
    root = tmp_path_factory.mktemp("endless-weights")
    build_weights("llm", source=str(source), dtype="float32", dest=root / "llm", log=lambda *a: None)
    return root


@pytest.fixture(scope="session")
def endless_llm_server(endless_weights_root):
    """The LLM predictor on the endless tiny model, at the llm overlay's concurrency (16)."""
    with serving("predict.py:LLMRunner", endless_weights_root) as server:
        yield server


@pytest.fixture(scope="session")
def endless_llm_server_single(endless_weights_root):
    """The same at concurrency 1: the synchronous run(), which coglet can cancel mid-stream."""
    with serving("predict.py:LLMRunner", endless_weights_root, COG_MAX_CONCURRENCY="1") as server:
        yield server
