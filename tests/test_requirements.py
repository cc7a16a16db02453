"""Per-model requirement files (requirements/MODEL.txt): what each image installs."""

import re

from cogkit.ship.config import compose
from cogkit.weights import project_root
from models import MODELS

ROOT = project_root()


def pins(path) -> dict:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_each_model_file_agrees_with_the_development_pins():
    everything = pins(ROOT / "requirements.txt")
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        for name, version in pins(path).items():
            assert everything.get(name) == version, \
                f"{path.name}: {name}=={version}, requirements.txt: {everything.get(name)}"


def test_every_shipped_model_names_its_own_file_and_tts_carries_no_torch():
    for model in MODELS:
        config = compose(model, ROOT).config
        wanted = config["build"]["python_requirements"]
        if (ROOT / "requirements" / f"{model}.txt").is_file():
            assert wanted == f"requirements/{model}.txt", model
        assert (ROOT / wanted).is_file(), f"{model}: {wanted} does not exist"
    tts = pins(ROOT / "requirements" / "tts.txt")
    assert not {"torch", "transformers", "diffusers"} & set(tts)
