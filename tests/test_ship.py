"""Shipping without a server: select writes a valid cog.yaml, the compat check finds each kind of
breaking change in schemas made from real predictor classes, expectations, the lock, and `cogkit push`
failing fast where the Cog CLI or Docker is missing."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
import wave

import pytest
import yaml

from cogkit.ship import commands as ship
from cogkit.schema import load_predictor_info, openapi_schema
from cogkit.ship.compat import (NEW_REQUIRED, OUTPUT_CHANGE, REMOVED_CHOICE, REMOVED_INPUT, TIGHTENED,
                                TYPE_CHANGE, breaking_changes)
from cogkit.ship.config import ShipError, compose, config_problems, select
from cogkit.ship.examples import declaration_problems, expectation_failures
from models import MODELS
from tests.conftest import ROOT


def make_scratch_root(tmp_path, overlays: dict | None = None):
    """A project to ship that is not this checkout: the real predict.py and model code (linked),
    the real base.yaml and Cog schema, its own overlays and locks (so tests never touch the repo's)."""
    root = tmp_path / "project"
    (root / "models" / "cog").mkdir(parents=True)
    (root / "models" / "locks").mkdir()
    for name in ("predict.py", "requirements.txt", "requirements"):
        (root / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / ".dockerignore", root / ".dockerignore")
    for entry in (ROOT / "models").iterdir():
        if entry.name not in ("cog", "locks", "__pycache__"):
            (root / "models" / entry.name).symlink_to(entry)
    for name in ("base.yaml", "cog-config-schema.json"):
        shutil.copy(ROOT / "models" / "cog" / name, root / "models" / "cog" / name)
    for model, overlay in (overlays or {}).items():
        (root / "models" / "cog" / f"{model}.yaml").write_text(yaml.safe_dump(overlay))
    return root


LLM_OVERLAY = {"hardware": "gpu-t4", "cog": {"build": {"gpu": True}, "run": "predict.py:LLMRunner"},
               "examples": [{"name": "says something", "input": {"prompt": "Hi", "max_new_tokens": 3,
                                                                 "temperature": 0},
                             "expect": {"regex": r"\S"}}]}


# ---------------------------------------------------------------- select


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_has_an_overlay_that_selects(model):
    selection = select(model, ROOT, write=False)
    assert selection.config["run"] == MODELS[model].runner
    assert selection.examples, f"models/cog/{model}.yaml declares no examples"
    assert declaration_problems(selection.examples, openapi_schema(load_predictor_info(
        selection.config["run"], ROOT)), ROOT) == []


def test_committed_cog_yaml_is_the_default_models(tmp_path):
    assert (ROOT / "cog.yaml").read_text() == ship_render("llm")


def ship_render(model):
    from cogkit.ship.config import render

    return render(select(model, ROOT, write=False))


def test_select_writes_each_models_cog_yaml_and_back(tmp_path):
    root = make_scratch_root(tmp_path, {m: yaml.safe_load((ROOT / "models" / "cog" / f"{m}.yaml").read_text())
                                        for m in MODELS})
    for model in [*sorted(MODELS), "llm"]:
        select(model, root)
        config = yaml.safe_load((root / "cog.yaml").read_text())
        assert config_problems(config, root) == []
        assert config["run"] == MODELS[model].runner
        assert config["build"]["python_version"] == "3.11"


def test_select_fails_naming_a_missing_class(tmp_path):
    overlay = {**LLM_OVERLAY, "cog": {"build": {"gpu": True}, "run": "predict.py:NoSuchRunner"}}
    root = make_scratch_root(tmp_path, {"llm": overlay})
    with pytest.raises(ShipError, match="NoSuchRunner"):
        select("llm", root)
    assert not (root / "cog.yaml").exists()


def test_select_rejects_a_missing_predictor_class_even_if_models_agrees(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setitem(MODELS, "llm", replace(MODELS["llm"], runner="predict.py:NoSuchRunner"))
    overlay = {**LLM_OVERLAY, "cog": {"build": {"gpu": True}, "run": "predict.py:NoSuchRunner"}}
    root = make_scratch_root(tmp_path, {"llm": overlay})
    with pytest.raises(ShipError, match="class NoSuchRunner could not be loaded from predict.py"):
        select("llm", root)


@pytest.mark.parametrize("change, message", [
    ({"hardware": "gpu-t4", "cog": {"build": {"gpu": False}}}, "gpu-t4 is a GPU but build.gpu is not true"),
    ({"hardware": "cpu", "cog": {"build": {"gpu": True}}}, "set build.gpu: false"),
    ({"hardware": "gpu-x9000"}, "unknown hardware 'gpu-x9000'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"cog": {"build": {"gpu": True, "python_versoin": "3.11"}}}, "python_versoin"),
    ({"cog": {"build": {"gpu": True, "system_packages": "ffmpeg"}}}, "build.system_packages"),
])
def test_select_explains_a_bad_overlay(tmp_path, change, message):
    root = make_scratch_root(tmp_path, {"llm": {**LLM_OVERLAY, **change}})
    with pytest.raises(ShipError, match=message):
        select("llm", root)


def test_overlay_lists_append_to_the_base(tmp_path):
    root = make_scratch_root(tmp_path, {"llm": {**LLM_OVERLAY, "cog": {
        "build": {"gpu": True, "system_packages": ["ffmpeg"]}}}})
    base = yaml.safe_load((root / "models" / "cog" / "base.yaml").read_text())
    base["build"]["system_packages"] = ["git", "ffmpeg"]
    (root / "models" / "cog" / "base.yaml").write_text(yaml.safe_dump(base))
    assert compose("llm", root).config["build"]["system_packages"] == ["git", "ffmpeg"]


def test_a_model_without_an_overlay_is_told_where_to_write_one(tmp_path):
    root = make_scratch_root(tmp_path)
    with pytest.raises(ShipError, match="create models/cog/llm.yaml"):
        select("llm", root)


# ---------------------------------------------------------------- compat


def schema_of(tmp_path, run_signature: str, output: str = "str") -> dict:
    """The OpenAPI schema of a real predictor class with this run() signature, through Cog's SDK."""
    module = f"compat_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""\
        from cog import BaseRunner, Input
        class R(BaseRunner):
            def run(self, {run_signature}) -> {output}:
                return None
        """))
    return openapi_schema(load_predictor_info(f"{module}.py:R", tmp_path))


BASE_SIGNATURE = ('prompt: str = Input(description="p", max_length=100), '
                  'steps: int = Input(description="s", default=4, ge=1, le=50), '
                  'scheduler: str = Input(description="c", default="ddim", choices=["ddim", "euler", "dpm"]), '
                  'seed: int | None = Input(description="seed", default=None)')


def kinds(violations):
    return [(v.kind, v.name) for v in violations]


def test_unchanged_schema_has_no_breaking_change(tmp_path):
    assert breaking_changes(schema_of(tmp_path, BASE_SIGNATURE), schema_of(tmp_path, BASE_SIGNATURE)) == []


def test_compatible_changes_pass(tmp_path):
    looser = ('prompt: str = Input(description="p", max_length=200), '
              'steps: int = Input(description="s", default=8, ge=1, le=100), '
              'scheduler: str = Input(description="c", default="ddim", choices=["ddim", "euler", "dpm", "heun"]), '
              'seed: int | None = Input(description="seed", default=None), '
              'extra: float = Input(description="new but optional", default=1.0)')
    assert breaking_changes(schema_of(tmp_path, BASE_SIGNATURE), schema_of(tmp_path, looser)) == []


@pytest.mark.parametrize("new_signature, expected", [
    (BASE_SIGNATURE.replace(', scheduler: str = Input(description="c", default="ddim", choices=["ddim", "euler", "dpm"])', ""),
     [(REMOVED_INPUT, "scheduler")]),
    (BASE_SIGNATURE.replace('"euler", "dpm"]', '"euler"]'), [(REMOVED_CHOICE, "scheduler")]),
    (BASE_SIGNATURE.replace('steps: int = Input(description="s", default=4, ge=1, le=50)',
                            'steps: str = Input(description="s", default="4")'), [(TYPE_CHANGE, "steps")]),
    (BASE_SIGNATURE.replace('seed: int | None = Input(description="seed", default=None)',
                            'seed: int = Input(description="seed", default=0)'), [(TYPE_CHANGE, "seed")]),
    (BASE_SIGNATURE + ', negative: str = Input(description="n")', [(NEW_REQUIRED, "negative")]),
    (BASE_SIGNATURE.replace("ge=1, le=50", "ge=2, le=50"), [(TIGHTENED, "steps")]),
    (BASE_SIGNATURE.replace("ge=1, le=50", "ge=1, le=40"), [(TIGHTENED, "steps")]),
    (BASE_SIGNATURE.replace("max_length=100", "max_length=99"), [(TIGHTENED, "prompt")]),
    (BASE_SIGNATURE.replace('seed: int | None = Input(description="seed", default=None)',
                            'seed: int | None = Input(description="seed", default=None, ge=0)'),
     [(TIGHTENED, "seed")]),
])
def test_each_kind_of_breaking_change_is_named(tmp_path, new_signature, expected):
    changes = breaking_changes(schema_of(tmp_path, BASE_SIGNATURE), schema_of(tmp_path, new_signature))
    assert kinds(changes) == expected
    assert all(str(c).startswith(f"{c.kind}: {c.name}: ") for c in changes)


def test_several_breaking_changes_are_all_listed(tmp_path):
    worse = ('prompt: str = Input(description="p", max_length=50), '
             'steps: int = Input(description="s", default=4, ge=1, le=50), '
             'scheduler: str = Input(description="c", default="euler", choices=["euler", "dpm"]), '
             'style: str = Input(description="required now")')
    changes = breaking_changes(schema_of(tmp_path, BASE_SIGNATURE), schema_of(tmp_path, worse))
    assert sorted(kinds(changes)) == sorted([(TIGHTENED, "prompt"), (REMOVED_CHOICE, "scheduler"),
                                             (REMOVED_INPUT, "seed"), (NEW_REQUIRED, "style")])
    assert "'ddim' is no longer a choice" in " ".join(map(str, changes))
    assert "maxLength 100 -> 50" in " ".join(map(str, changes))


def test_output_type_change_is_breaking(tmp_path):
    changes = breaking_changes(schema_of(tmp_path, BASE_SIGNATURE), schema_of(tmp_path, BASE_SIGNATURE, "int"))
    assert kinds(changes) == [(OUTPUT_CHANGE, "output")]


# ---------------------------------------------------------------- checks through the CLI, lock


def cogkit(*args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def locked(root, model, schema, image="r8.im/acme/llm", version="v1"):
    path = root / "models" / "locks" / f"{model}.schema.json"
    path.write_text(json.dumps({"model": model, "image": image, "version": version, "schema": schema}))
    return path


def test_check_flags_a_breaking_change_against_the_lock_and_allow_breaking_overrides(tmp_path, tiny_weights_root):
    root = make_scratch_root(tmp_path, {"llm": LLM_OVERLAY})
    schema = openapi_schema(load_predictor_info("predict.py:LLMRunner", ROOT))
    old = json.loads(json.dumps(schema))
    old["components"]["schemas"]["Input"]["properties"]["temperature_scale"] = {"type": "number", "title": "T"}
    old["components"]["schemas"]["Input"]["properties"]["max_new_tokens"]["maximum"] = 16384
    locked(root, "llm", old)
    env = {"COGKIT_SHIP_ROOT": str(root), "COGKIT_WEIGHTS_DIR": str(tiny_weights_root)}
    res = cogkit("check", "llm", "--no-examples", env=env)
    assert res.returncode == 1, res.stderr
    assert "removed input: temperature_scale" in res.stderr
    assert "tightened bound: max_new_tokens: maximum 16384 -> 8192" in res.stderr
    assert "compat    FAIL" in res.stderr and "weights   ok" in res.stderr
    res = cogkit("check", "llm", "--no-examples", "--allow-breaking", "renamed for clarity", env=env)
    assert res.returncode == 0, res.stderr
    assert "allowed: renamed for clarity" in res.stderr

    locked(root, "llm", schema)
    res = cogkit("check", "llm", "--no-examples", env=env)
    assert res.returncode == 0, res.stderr
    assert "compatible with the schema pushed to r8.im/acme/llm (version v1)" in res.stderr


def test_write_lock_records_schema_version_and_breaking_reasons(tmp_path):
    root = make_scratch_root(tmp_path)
    from cogkit.ship.compat import Violation

    ship.write_lock("llm", root, "r8.im/acme/llm", "abc", {"s": 1}, [], None)
    path = ship.write_lock("llm", root, "r8.im/acme/llm", "def", {"s": 2},
                           [Violation(REMOVED_INPUT, "x", "gone")], "x was never used")
    lock = json.loads(path.read_text())
    assert lock["version"] == "def" and lock["schema"] == {"s": 2} and lock["image"] == "r8.im/acme/llm"
    assert lock["allowed_breaking"] == [{"at": lock["allowed_breaking"][0]["at"], "reason": "x was never used",
                                         "changes": ["removed input: x: gone"], "from_version": "abc"}]


# ---------------------------------------------------------------- push preconditions


def test_push_without_cog_or_engine_fails_fast_saying_how_to_install_them(tmp_path):
    started = time.monotonic()
    res = cogkit("push", "llm", "r8.im/acme/llm", env={"PATH": str(tmp_path)})  # no cog, docker or podman
    assert time.monotonic() - started < 20
    assert res.returncode == 1
    assert "`cog` is not on PATH" in res.stderr
    assert "github.com/replicate/cog/releases" in res.stderr
    assert "no container engine" in res.stderr and "apt-get install docker.io" in res.stderr
    assert "check 1" not in res.stderr  # stopped before any check, server or build
    assert "Traceback" not in res.stderr


def test_push_all_stops_at_the_first_failure(tmp_path):
    res = cogkit("push", "--all", "--owner", "acme", env={"PATH": str(tmp_path)})
    assert res.returncode == 1
    first = next(iter(MODELS))
    assert f"cannot push {first}" in res.stderr
    assert len(MODELS) == 1 or f"stopped at {first}" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["push", "llm", "acme/llm"], "must look like r8.im/OWNER/NAME"),
    (["push", "llm", "r8.im/acme/llm:latest"], "must look like r8.im/OWNER/NAME"),
    (["push", "llm"], "usage: cogkit push MODEL"),
    (["push", "nosuch", "r8.im/acme/x"], "unknown model 'nosuch'"),
    (["push", "--all", "llm"], "--all pushes every model"),
])
def test_push_usage_errors(args, message):
    res = cogkit(*args)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- expectations


def png_data_uri(width, height):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_data_uri(seconds, rate=16000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("output, expect, failure", [
    ("Paris.", {"equals": "Paris."}, None),
    ("Paris!", {"equals": "Paris."}, "is not exactly"),
    ("The capital is Paris.", {"contains": ["capital", "Paris"]}, None),
    ("The capital is Lyon.", {"contains": "Paris"}, "does not contain 'Paris'"),
    ("a b c", {"not_contains": "d"}, None),
    ("a b c", {"not_contains": "b"}, "contains 'b'"),
    ("line one\nline two", {"regex": "one.*two"}, None),
    ("nothing", {"regex": r"^\d+$"}, "does not match"),
    (["not", "text"], {"contains": "x"}, "expected text"),
    ({"text": "hello", "chunks": []}, {"field": "text", "equals": "hello"}, None),
    ({"chunks": []}, {"field": "text", "equals": "hello"}, "no field 'text'"),
    ([png_data_uri(64, 48)], {"index": 0, "image": {"width": 64, "height": 48, "format": "png"}}, None),
    ([png_data_uri(64, 48)], {"index": 0, "image": {"width": 32}}, "image width 64 is not 32"),
    ([], {"index": 0, "image": {"width": 32}}, "no item 0"),
    ("https://x/y.png", {"image": {"width": 32}}, "expected a file output"),
    (wav_data_uri(1.5), {"audio": {"min_seconds": 1, "max_seconds": 2}}, None),
    (wav_data_uri(0.5), {"audio": {"min_seconds": 1}}, "audio lasts 0.50s"),
    (png_data_uri(8, 8), {"audio": {"min_seconds": 1}}, "output is not a"),
    ("data:text/plain;base64," + base64.b64encode(b"1\n00:00:00,000 --> 00:00:02,000\nhi\n").decode(),
     {"regex": "--> 00:00:02", "contains": "hi"}, None),
    ("data:text/plain;base64," + base64.b64encode(b"bye").decode(), {"contains": "hi"}, "'bye' does not contain"),
])
def test_expectations(output, expect, failure):
    failures = expectation_failures(output, expect)
    if failure is None:
        assert failures == []
    else:
        assert len(failures) == 1 and failure in failures[0]


def test_example_declarations_are_checked_against_the_schema():
    schema = openapi_schema(load_predictor_info("predict.py:LLMRunner", ROOT))
    problems = declaration_problems([
        {"name": "ok", "input": {"prompt": "hi"}, "expect": {"contains": "x"}},
        {"name": "typo", "input": {"promt": "hi"}, "expect": {"contains": "x"}},
        {"name": "no expectation", "input": {"prompt": "hi"}},
        {"name": "bad regex", "input": {"prompt": "hi"}, "expect": {"regex": "("}},
        {"name": "odd key", "input": {"prompt": "hi"}, "expect": {"contain": "x"}},
        {"name": "text as file", "input": {"prompt": "@prompt.txt"}, "expect": {"contains": "x"}},
    ], schema, ROOT)
    assert problems == [
        "example 2 (typo): input 'promt' is not one of the model's inputs (prompt, system_prompt, "
        "max_new_tokens, temperature, top_p, top_k, stop_sequences, seed, messages)",
        "example 2 (typo): required input 'prompt' is missing",
        "example 3 (no expectation): declares no expectation (expect: equals/contains/regex/image/audio)",
        "example 4 (bad regex): regex '(' does not compile: missing ), unterminated subpattern at position 0",
        "example 5 (odd key): unknown key 'contain'",
        "example 6 (text as file): input 'prompt' is not a file input but is given '@prompt.txt'",
    ]
    if "image" not in MODELS:
        return
    image_schema = openapi_schema(load_predictor_info(MODELS["image"].runner, ROOT))
    assert declaration_problems([{"name": "gone", "input": {"prompt": "x", "image": "@models/cog/nope.png"},
                                  "expect": {"index": 0, "image": {"width": 64}}}], image_schema, ROOT) == [
        "example 1 (gone): input 'image': file models/cog/nope.png does not exist"]


# ---------------------------------------------------------------- scripts/push.sh


def test_push_script_without_an_engine_stops_before_setup_or_build(tmp_path):
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))  # no docker, podman or cog on this PATH
    res = subprocess.run([shutil.which("bash"), "scripts/push.sh", "acme", "llm"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PATH": str(tmp_path)}, timeout=30)
    assert res.returncode == 1
    assert "no container engine answers" in res.stderr and "apt-get install docker.io" in res.stderr
    usage = subprocess.run(["bash", "scripts/push.sh"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: scripts/push.sh" in usage.stderr


def test_select_command_names_the_missing_class_and_writes_nothing(tmp_path):
    overlay = {**LLM_OVERLAY, "cog": {"build": {"gpu": True}, "run": "predict.py:NoSuchRunner"}}
    root = make_scratch_root(tmp_path, {"llm": overlay})
    res = cogkit("select", "llm", env={"COGKIT_SHIP_ROOT": str(root)})
    assert res.returncode == 1
    assert "NoSuchRunner" in res.stderr and "Traceback" not in res.stderr
    assert not (root / "cog.yaml").exists()
    res = cogkit("select", "llm", "--stdout")
    assert res.returncode == 0 and res.stdout == (ROOT / "cog.yaml").read_text()
