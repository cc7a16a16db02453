"""The image builder: the built-in tiny pipeline, conversion to the runtime dtype, the manifest, and
the pure input rules (no server)."""

import json

import pytest

from cogkit.build import build_weights
from cogkit.weights import read_manifest, verify
from models.image.generation import ImageInputError, check_size, img2img_size


def test_built_folder_is_a_checksummed_float32_pipeline(image_weights_root):
    folder = image_weights_root / "image"
    manifest = read_manifest(folder)
    assert verify(folder) == []
    assert manifest["source"] == "builtin:tiny-sd"
    assert manifest["dtype"] == "float32"
    assert manifest["architecture"] == "StableDiffusionPipeline"
    assert manifest["native_size"] == 64
    assert set(manifest["parameters"]) == {"unet", "vae", "text_encoder"}
    assert sum(manifest["parameters"].values()) < 2_000_000  # tiny: renders 64x64 in a fraction of a second
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        assert part in manifest["files"]
    assert not any(p.startswith(".source") for p in manifest["files"])


def test_builtin_source_is_deterministic(tmp_path):
    from models.image.build import builtin_source

    a = builtin_source("tiny-sd", tmp_path / "a")
    b = builtin_source("tiny-sd", tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_tiny_tokenizer_merges_common_words():
    from models.image.build import make_tiny_clip_tokenizer

    tok = make_tiny_clip_tokenizer()
    ids = tok("a red fox").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 5  # start, a, red, fox, end: each word is one merged token
    assert tok.decode(ids, skip_special_tokens=True) == "a red fox"


def test_converts_a_pipeline_folder_to_half_precision(tmp_path):
    from models.image.build import builtin_source
    from safetensors import safe_open

    source = builtin_source("tiny-sd", tmp_path / "source")
    manifest = build_weights("image", source=str(source), dtype="float16", dest=tmp_path / "image",
                             log=lambda *a: None)
    assert manifest["dtype"] == "float16"
    assert manifest["source"] == str(source.resolve())
    with safe_open(tmp_path / "image" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        build_weights("image", source=str(tmp_path / "junk"), dtype="float32", dest=tmp_path / "out",
                      log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_a_pipeline_without_a_unet_is_refused(tmp_path):
    source = tmp_path / "flux"
    source.mkdir()
    (source / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "X"]}))
    with pytest.raises(ValueError, match="FluxPipeline without unet; the image predictor runs UNet-based"):
        build_weights("image", source=str(source), dtype="float32", dest=tmp_path / "out", log=lambda *a: None)


def test_unknown_builtin_is_refused(tmp_path):
    with pytest.raises(ValueError, match="builtin:tiny-sd"):
        build_weights("image", source="builtin:huge-sd", dtype="float32", dest=tmp_path / "out",
                      log=lambda *a: None)


@pytest.mark.parametrize("value, ok", [(64, True), (72, True), (1024, True), (None, True),
                                       (100, False), (63, False), (1032, False)])
def test_size_rule(value, ok):
    if ok:
        check_size("width", value)
    else:
        with pytest.raises(ImageInputError, match="width"):
            check_size("width", value)


@pytest.mark.parametrize("image, width, height, expected", [
    ((100, 75), None, None, (96, 72)),        # the input's size, rounded down to multiples of 8
    ((3000, 1500), None, None, (1024, 512)),  # scaled down to fit 1024, aspect kept
    ((30, 20), None, None, (64, 64)),         # never below 64
    ((200, 100), 128, None, (128, 64)),       # one side given: the other keeps the aspect
    ((200, 100), None, 96, (192, 96)),
    ((200, 100), 64, 256, (64, 256)),         # both given: as asked
])
def test_img2img_output_size(image, width, height, expected):
    assert img2img_size(image, width, height) == expected
