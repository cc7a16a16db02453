"""One repository, many models, one cog.yaml at a time: compose it from a shared base and the
model's overlay, and check that what Cog would build is valid and points at a described predictor.

`models/cog/base.yaml` holds what every image shares; `models/cog/<model>.yaml` holds the model's
`hardware` (Replicate SKU), its `cog:` part (merged onto the base) and its example predictions.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cogkit.weights import project_root
from models import get_model

COG_DIR = Path("models") / "cog"
BASE = "base.yaml"
COG_SCHEMA = "cog-config-schema.json"  # replicate/cog's published JSON schema for cog.yaml
OVERLAY_KEYS = {"hardware", "cog", "examples", "snapshot"}

# Replicate's hardware SKUs (`GET /v1/hardware`); a new SKU only needs adding here.
KNOWN_HARDWARE = ("cpu", "gpu-t4", "gpu-l40s", "gpu-l40s-2x", "gpu-l40s-4x", "gpu-l40s-8x",
                  "gpu-a100-large", "gpu-a100-large-2x", "gpu-a100-large-4x", "gpu-a100-large-8x",
                  "gpu-h100", "gpu-h100-2x", "gpu-h100-4x", "gpu-h100-8x")


class ShipError(Exception):
    """A model cannot be selected, checked or pushed; the message says what to fix."""


@dataclass
class Selection:
    model: str
    hardware: str
    config: dict  # the cog.yaml content
    examples: list = field(default_factory=list)
    snapshot: bool = True  # false: the predictor keeps no boot snapshot, so there is none to verify
    notes: list = field(default_factory=list)  # things worth saying that do not stop a push


def cog_dir(root: Path | None = None) -> Path:
    return Path(root or project_root()) / COG_DIR


def overlay_path(model: str, root: Path | None = None) -> Path:
    return cog_dir(root) / f"{model}.yaml"


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ShipError(f"{path} is missing") from None
    except yaml.YAMLError as e:
        raise ShipError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ShipError(f"{path} must hold a mapping, not {type(data).__name__}")
    return data


def merge(base, overlay):
    """Mappings merge key by key, lists append (without repeating an item), anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(overlay, list):
        return base + [item for item in overlay if item not in base]
    return overlay


def read_overlay(model: str, root: Path | None = None) -> dict:
    path = overlay_path(model, root)
    if not path.is_file():
        raise ShipError(f"model {model!r} has no overlay: create {path.relative_to(Path(root or project_root()))}"
                        f" (hardware, cog: build/run, examples), like models/cog/llm.yaml")
    overlay = read_yaml(path)
    unknown = sorted(set(overlay) - OVERLAY_KEYS)
    if unknown:
        raise ShipError(f"{path.name}: unknown key {unknown[0]!r}; an overlay holds {', '.join(sorted(OVERLAY_KEYS))}")
    return overlay


def compose(model: str, root: Path | None = None) -> Selection:
    """The cog.yaml for `model` and its declared hardware and examples (nothing is written)."""
    root = Path(root or project_root())
    spec = get_model(model)
    overlay = read_overlay(model, root)
    config = merge(read_yaml(cog_dir(root) / BASE), overlay.get("cog") or {})
    config.setdefault("run", spec.runner)
    notes = []
    if config["run"] != spec.runner:
        raise ShipError(f"{overlay_path(model, root).name}: run is {config['run']!r} but MODELS[{model!r}].runner "
                        f"is {spec.runner!r}; they must name the same predictor")
    # The image's predictor learns which model it serves from COGKIT_MODEL (several models may share
    # one predictor class, e.g. two LLMs); cogkit's local servers set the same variable.
    environment = list(config.get("environment") or [])
    pinned = [e for e in environment if e.startswith("COGKIT_MODEL=")]
    if pinned and pinned != [f"COGKIT_MODEL={model}"]:
        raise ShipError(f"{overlay_path(model, root).name}: environment sets {pinned[0]}, but this overlay is "
                        f"for {model}; leave COGKIT_MODEL out (cogkit sets it)")
    config["environment"] = environment if pinned else environment + [f"COGKIT_MODEL={model}"]
    hardware = overlay.get("hardware", spec.hardware)
    if "hardware" in overlay and spec.hardware != hardware:
        notes.append(f"MODELS[{model!r}].hardware is {spec.hardware!r}; the overlay's {hardware!r} is used")
    check_hardware(model, hardware, bool(config.get("build", {}).get("gpu")))
    examples = overlay.get("examples") or []
    if not isinstance(examples, list):
        raise ShipError(f"{overlay_path(model, root).name}: examples must be a list")
    snapshot = overlay.get("snapshot", True)
    if not isinstance(snapshot, bool):
        raise ShipError(f"{overlay_path(model, root).name}: snapshot must be true or false, not {snapshot!r}")
    return Selection(model=model, hardware=hardware, config=config, examples=examples, snapshot=snapshot,
                     notes=notes)


def check_hardware(model: str, hardware: str, gpu: bool) -> None:
    if hardware not in KNOWN_HARDWARE:
        raise ShipError(f"{model}: unknown hardware {hardware!r}; Replicate offers {', '.join(KNOWN_HARDWARE)}")
    if hardware.startswith("gpu-") and not gpu:
        raise ShipError(f"{model}: hardware {hardware} is a GPU but build.gpu is not true: the image would have no CUDA")
    if hardware == "cpu" and gpu:
        raise ShipError(f"{model}: hardware cpu with build.gpu true builds a CUDA image that never sees a GPU; "
                        f"set build.gpu: false or pick a gpu-* hardware")


def cog_config_schema(root: Path | None = None) -> dict:
    return json.loads((cog_dir(root) / COG_SCHEMA).read_text())


def config_problems(config: dict, root: Path | None = None) -> list[str]:
    """Where `config` breaks Cog's JSON schema, one line per problem with its location."""
    import jsonschema

    validator = jsonschema.Draft7Validator(cog_config_schema(root))
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"cog.yaml {where}: {error.message}")
    root = Path(root or project_root())
    requirements = config.get("build", {}).get("python_requirements")
    if requirements and not (root / requirements).is_file():
        problems.append(f"cog.yaml build.python_requirements: {requirements} does not exist")
    return problems


def runner_problems(ref: str, root: Path | None = None) -> list[str]:
    """The `run:` reference must resolve to a class whose every input has a description."""
    from cogkit.schema import load_predictor_info

    root = Path(root or project_root())
    file, sep, cls = ref.partition(":")
    if not sep or not cls:
        return [f"run {ref!r}: expected FILE.py:ClassName"]
    if not (root / file).is_file():
        return [f"run {ref!r}: {file} does not exist"]
    try:
        info = load_predictor_info(ref, root)
    except Exception as e:  # the SDK raises plain errors for a missing class or a bad signature
        text = str(e) or type(e).__name__
        if cls not in text:
            text = f"{cls}: {text}"
        return [f"run {ref!r}: class {cls} could not be loaded from {file}: {text}"]
    if not info.inputs:
        return [f"run {ref!r}: {cls} takes no inputs"]
    return [f"run {ref!r}: input {name!r} has no description"
            for name, f in info.inputs.items() if not f.description]


def render(selection: Selection) -> str:
    header = (f"# Generated by `cogkit select {selection.model}` from models/cog/base.yaml and "
              f"models/cog/{selection.model}.yaml:\n# edit those and select again. Replicate hardware: "
              f"{selection.hardware}. Build the weights first (cogkit build-weights {selection.model}).\n")
    return header + yaml.safe_dump(selection.config, sort_keys=False, default_flow_style=False)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def select(model: str, root: Path | None = None, write: bool = True) -> Selection:
    """Compose, validate and (unless `write` is false) write the root cog.yaml for `model`."""
    root = Path(root or project_root())
    selection = compose(model, root)
    problems = config_problems(selection.config, root) + runner_problems(selection.config["run"], root)
    if problems:
        raise ShipError(f"cannot select {model}:\n  " + "\n  ".join(problems))
    if write:
        write_text_atomic(root / "cog.yaml", render(selection))
    return selection
