"""cog.yaml is what the Cog CLI accepts, and points at a real predictor."""

import json

import jsonschema
import yaml

from cogkit.schema import load_predictor_info
from tests.conftest import ROOT


def test_cog_yaml_passes_cogs_json_schema():
    schema = json.loads((ROOT / "models" / "cog" / "cog-config-schema.json").read_text())  # replicate/cog's
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["build"]["python_version"] == "3.11"
    assert (ROOT / config["build"]["python_requirements"]).is_file()


def test_cog_yaml_run_resolves_to_a_runner_whose_inputs_are_described():
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    info = load_predictor_info(config["run"], ROOT)
    assert info.inputs
    assert all(field.description for field in info.inputs.values())


def test_runtime_requirements_are_pinned_and_match_dev():
    runtime = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert runtime and all("==" in line for line in runtime)
