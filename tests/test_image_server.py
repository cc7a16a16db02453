"""The image predictor through the real coglet server, with the tiny random Stable Diffusion."""

import base64
import io

import pytest
import requests
from PIL import Image

from cogkit.server import ServerError

FAST = {"prompt": "a red fox", "num_inference_steps": 2}


def predict(server, **inputs) -> dict:
    return server.predict({**FAST, **inputs})


def files(result) -> list[bytes]:
    assert result["status"] == "succeeded", result
    assert isinstance(result["output"], list)
    return [base64.b64decode(uri.partition(",")[2]) for uri in result["output"]]


def mime_types(result) -> list[str]:
    return [uri.partition(";")[0].removeprefix("data:") for uri in result["output"]]


def png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gradient(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height),
                           bytes((x * 255 // width) if c == 0 else (y * 255 // height) if c == 1 else 128
                                 for y in range(height) for x in range(width) for c in range(3)))


@pytest.mark.parametrize("inputs, field, rule", [
    ({"prompt": ""}, "prompt", "shorter than 1"),
    ({"prompt": "x" * 2001}, "prompt", "longer than 2000"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "longer than 2000"),
    ({"width": 56}, "width", "minimum of 64"),
    ({"width": 1032}, "width", "maximum of 1024"),
    ({"height": 0}, "height", "minimum of 64"),
    ({"height": 2048}, "height", "maximum of 1024"),
    ({"num_outputs": 0}, "num_outputs", "minimum of 1"),
    ({"num_outputs": 5}, "num_outputs", "maximum of 4"),
    ({"num_inference_steps": 0}, "num_inference_steps", "minimum of 1"),
    ({"num_inference_steps": 101}, "num_inference_steps", "maximum of 100"),
    ({"guidance_scale": -0.1}, "guidance_scale", "minimum of 0"),
    ({"guidance_scale": 20.5}, "guidance_scale", "maximum of 20"),
    ({"scheduler": "K_LMS"}, "scheduler", "DPMSolverMultistep"),
    ({"seed": -1}, "seed", "minimum of 0"),
    ({"output_format": "gif"}, "output_format", "webp"),
    ({"output_quality": -1}, "output_quality", "minimum of 0"),
    ({"output_quality": 101}, "output_quality", "maximum of 100"),
    ({"prompt_strength": 1.5}, "prompt_strength", "maximum of 1"),
    ({"prompt_strength": -0.5}, "prompt_strength", "minimum of 0"),
    ({"num_outputs": "two"}, "num_outputs", "integer"),
])
def test_out_of_bounds_input_gets_422_naming_field_and_rule(image_server, inputs, field, rule):
    resp = requests.post(f"{image_server.url}/predictions", json={"input": {**FAST, **inputs}})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["loc"][-1] == field
    assert rule in detail["msg"]


def test_missing_prompt_is_422(image_server):
    with pytest.raises(ServerError, match="prompt: Field required"):
        image_server.predict({"num_outputs": 1})


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_not_a_multiple_of_8_fails_with_the_rule(image_server, field):
    result = predict(image_server, **{field: 100})
    assert result["status"] == "failed"
    assert f"{field}: 100 is not a multiple of 8" in result["error"]
    assert "try 96" in result["error"]
    assert "Traceback" not in result["error"]


@pytest.mark.parametrize("output_format, mime, pil_format", [
    ("webp", "image/webp", "WEBP"), ("jpg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG"),
])
def test_every_output_format_at_the_requested_size(image_server, output_format, mime, pil_format):
    result = predict(image_server, output_format=output_format, width=96, height=64, num_outputs=2, seed=3)
    blobs = files(result)
    assert mime_types(result) == [mime, mime]
    for blob in blobs:
        img = Image.open(io.BytesIO(blob))
        assert img.format == pil_format
        assert img.size == (96, 64)
    assert blobs[0] != blobs[1]  # two pictures, not one twice


def test_default_size_is_the_models_native_64(image_server):
    img = Image.open(io.BytesIO(files(predict(image_server, seed=1))[0]))
    assert img.size == (64, 64)
    assert img.format == "WEBP"  # the default output_format


def test_output_quality_changes_lossy_files_only(image_server):
    low = files(predict(image_server, seed=4, output_format="jpg", output_quality=5))[0]
    high = files(predict(image_server, seed=4, output_format="jpg", output_quality=95))[0]
    assert len(low) < len(high)
    png_low = files(predict(image_server, seed=4, output_format="png", output_quality=5))[0]
    png_high = files(predict(image_server, seed=4, output_format="png", output_quality=95))[0]
    assert png_low == png_high


def test_same_seed_same_bytes_different_seed_different_bytes(image_server):
    a = files(predict(image_server, seed=42, num_outputs=2, output_format="webp"))
    b = files(predict(image_server, seed=42, num_outputs=2, output_format="webp"))
    c = files(predict(image_server, seed=43, num_outputs=2, output_format="webp"))
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


def test_no_seed_picks_one_records_it_and_it_replays(image_server):
    first = predict(image_server, output_format="png")
    seed = first["metrics"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert f"seed: {seed}" in first["logs"]
    replay = predict(image_server, output_format="png", seed=seed)
    assert files(first) == files(replay)
    assert first["metrics"]["seconds_per_image"] > 0


@pytest.mark.parametrize("scheduler", ["DEFAULT", "DDIM", "DPMSolverMultistep", "K_EULER",
                                       "K_EULER_ANCESTRAL", "PNDM"])
def test_every_scheduler_runs_and_is_deterministic(image_server, scheduler):
    a = files(predict(image_server, scheduler=scheduler, seed=9, output_format="png", num_inference_steps=3))
    b = files(predict(image_server, scheduler=scheduler, seed=9, output_format="png", num_inference_steps=3))
    assert a == b


def test_schedulers_differ(image_server):
    euler = files(predict(image_server, scheduler="K_EULER", seed=9, output_format="png", num_inference_steps=3))
    ddim = files(predict(image_server, scheduler="DDIM", seed=9, output_format="png", num_inference_steps=3))
    assert euler != ddim


def test_negative_prompt_and_guidance_change_the_picture(image_server):
    plain = files(predict(image_server, seed=5, output_format="png"))
    negative = files(predict(image_server, seed=5, output_format="png", negative_prompt="blurry"))
    unguided = files(predict(image_server, seed=5, output_format="png", guidance_scale=0))
    assert plain != negative
    assert plain != unguided


def test_img2img_keeps_the_input_size_rounded_to_8_and_is_deterministic(image_server):
    uri = png_uri(gradient(100, 75))
    a = predict(image_server, image=uri, prompt_strength=0.5, seed=1, output_format="png")
    b = predict(image_server, image=uri, prompt_strength=0.5, seed=1, output_format="png")
    assert files(a) == files(b)
    assert Image.open(io.BytesIO(files(a)[0])).size == (96, 72)
    text_only = predict(image_server, width=96, height=72, seed=1, output_format="png")
    assert files(a) != files(text_only)


def test_img2img_follows_the_input_and_prompt_strength(image_server):
    """At low strength the output stays close to the input picture; at full strength it does not."""
    source = gradient(64, 64)
    uri = png_uri(source)

    def distance(strength):
        blob = files(predict(image_server, image=uri, prompt_strength=strength, seed=2, output_format="png",
                             num_inference_steps=10))[0]
        out = Image.open(io.BytesIO(blob)).convert("RGB")
        return sum(abs(p - q) for p, q in zip(out.tobytes(), source.tobytes())) / (64 * 64 * 3)

    assert distance(0.1) < distance(1.0)


def test_img2img_with_width_and_height_resizes_the_input(image_server):
    result = predict(image_server, image=png_uri(gradient(100, 75)), width=64, height=128, output_format="png")
    assert Image.open(io.BytesIO(files(result)[0])).size == (64, 128)


def test_img2img_strength_too_small_for_the_steps_fails_clearly(image_server):
    result = predict(image_server, image=png_uri(gradient(64, 64)), prompt_strength=0.2, num_inference_steps=2)
    assert result["status"] == "failed"
    assert "prompt_strength" in result["error"] and "at least 1" in result["error"]


@pytest.mark.parametrize("payload", [
    "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode(),
    # a real PNG cut in half
    None,
])
def test_corrupt_input_image_fails_naming_the_input(image_server, payload):
    if payload is None:
        whole = base64.b64decode(png_uri(gradient(64, 64)).partition(",")[2])
        payload = "data:image/png;base64," + base64.b64encode(whole[: len(whole) // 2]).decode()
    result = predict(image_server, image=payload)
    assert result["status"] == "failed"
    assert "image: not a readable image file" in result["error"]
    assert "Traceback" not in result["error"]


def test_too_long_prompt_is_truncated_and_logged(image_server):
    result = predict(image_server, prompt="a red fox " * 40 + "zebra crossing", seed=1, output_format="png")
    assert result["status"] == "succeeded"
    assert "prompt: longer than the text encoder's 77 tokens; truncated, dropping:" in result["logs"]
    assert "fox zebra crossing'" in result["logs"]
    short = predict(image_server, prompt="a red fox " * 25, seed=1, output_format="png")
    assert "truncated" not in short["logs"]


def test_setup_recorded_a_snapshot(image_server, image_weights_root):
    snaps = list((image_weights_root / "image" / "snapshot").glob("*/warmup.json"))
    assert len(snaps) == 1
