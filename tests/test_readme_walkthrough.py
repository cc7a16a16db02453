"""The README's "Package your own model" walkthrough, run as written on a fresh copy of the repository:
every command of its code blocks, in order, each one must succeed."""

import re

import pytest

from cogkit.weights import project_root
from tests.scratch_project import copy_project, run

SECTION = "## Package your own model"


def walkthrough_blocks() -> list[list[str]]:
    text = (project_root() / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def test_the_walkthrough_has_the_llm_and_the_custom_path():
    blocks = walkthrough_blocks()
    assert len(blocks) == 2
    assert any(line.startswith("cogkit new mychat --kind llm --source ./my-model") for line in blocks[0])
    assert any(line.startswith("cogkit new sentiment --kind custom") for line in blocks[1])
    assert all(block[-1].startswith("cogkit push") and block[-1].endswith("--dry-run") for block in blocks)


def run_block(root, commands: list[str]) -> list[tuple[str, object]]:
    outputs = []
    for command in commands:
        done = run(root, command, timeout=900)
        outputs.append((command, done))
        if done.returncode != 0:
            break
    return outputs


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Both blocks, each on its own fresh copy, side by side (they are independent; half the wait)."""
    from concurrent.futures import ThreadPoolExecutor

    roots = [copy_project(tmp_path_factory.mktemp(f"fresh-clone-{i}")) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(run_block, roots, walkthrough_blocks()))
    return list(zip(roots, outputs))


@pytest.mark.parametrize("index", [0, 1], ids=["llm", "custom"])
def test_walkthrough_runs_as_written(walkthrough, index):
    fresh_copy, outputs = walkthrough[index]
    for command, done in outputs:
        assert done.returncode == 0, f"`{command}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert [command for command, _ in outputs] == walkthrough_blocks()[index]
    push = outputs[-1][1]
    # The dry run passed every check (examples through the real server, the snapshot) and shows the push.
    assert re.search(r"check 4 examples\s+ok", push.stderr) and re.search(r"check 5 snapshot\s+ok", push.stderr)
    assert re.search(r"^\S.* push r8\.im/acme/(mychat|sentiment)$", push.stdout, re.M), push.stdout
    if index == 0:
        # The composed cog.yaml (and so the image) tells the shared LLMRunner which model it serves.
        assert "- COGKIT_MODEL=mychat" in run(fresh_copy, "cogkit select mychat --stdout").stdout
        # A second LLM is data: predict.py is untouched.
        assert (fresh_copy / "predict.py").read_text() == (project_root() / "predict.py").read_text()
    else:
        predicted = next(done for command, done in outputs if command.startswith("cogkit predict"))
        assert re.fullmatch(r"(negative|positive) [01]\.\d{3}\n", predicted.stdout)
