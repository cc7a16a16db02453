"""The image predictor's diffusers-free fast path (models/image/fastpath.py): it gives the full
pipeline's exact bytes, hands what it does not serve to the full pipeline, imports neither diffusers
nor transformers, and a broken or mismatched recorded program means a logged rebuild, not a failed boot."""

import base64
import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from cogkit.server import CogServer
from models import get_model
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def full(image_weights_root):
    from models.image.generation import ImageGenerator, load_pipeline

    return ImageGenerator(load_pipeline(image_weights_root / "image", "cpu", "float32"), "cpu")


@pytest.fixture(scope="module")
def recorded(full, tmp_path_factory):
    """A snapshot-like folder holding a recorded fast path."""
    from models.image import fastpath as image_fastpath

    folder = tmp_path_factory.mktemp("fastpath-snapshot")
    logs = []
    assert image_fastpath.record(full, folder, "cpu", compiled=False, log=logs.append), logs
    assert logs == ["fast path: recorded"]
    return folder


@pytest.fixture(scope="module")
def fast(recorded, full):
    from models.image import fastpath as image_fastpath

    generator, rerecord = image_fastpath.load(recorded, "cpu", False, full=lambda: full)
    assert generator is not None and not rerecord
    return generator


def request(**kw):
    from models.image.generation import ImageRequest

    return ImageRequest(**{"prompt": "a red fox", **kw})


def file_bytes(images, output_format, tmp_path):
    from models.image.generation import encode_images

    folder = tmp_path / output_format
    folder.mkdir(parents=True)
    return [p.read_bytes() for p in encode_images(images, output_format, 80, folder)]


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("num_outputs", [1, 2])
def test_default_settings_give_the_full_pipelines_bytes_in_every_format(fast, full, seed, num_outputs, tmp_path):
    req = request(seed=seed, num_outputs=num_outputs)  # default steps, guidance, scheduler and size
    got, want = fast.generate(req), full.generate(req)
    assert len(got) == num_outputs
    for output_format in ("webp", "jpg", "png"):
        assert file_bytes(got, output_format, tmp_path / "fast") == file_bytes(want, output_format, tmp_path / "full")


@pytest.mark.parametrize("kw", [
    dict(width=128, height=96, num_outputs=3, seed=3),
    dict(guidance_scale=1.0, num_inference_steps=7, seed=4),
    dict(negative_prompt="a dog", guidance_scale=12.5, num_inference_steps=2, num_outputs=4, seed=5),
    dict(prompt="the fox " * 60, seed=6, num_inference_steps=3),  # truncated at 77 tokens
    dict(prompt="Ünïcode  \t café, PHOTO!", num_inference_steps=100, seed=7),
])
def test_other_sizes_steps_guidance_and_prompts_give_the_same_pixels(fast, full, kw):
    req = request(**kw)
    assert fast.serves(req) == (True, "")
    got, want = fast.generate(req), full.generate(req)
    assert [(i.size, i.tobytes()) for i in got] == [(i.size, i.tobytes()) for i in want]


def test_tokenizer_json_encodes_like_the_pipelines_tokenizer(fast, full):
    tok = full.text2img.tokenizer
    for text in ("", "a red fox", "A  RED\nfox, in the forest!!", "naïve café 東京", "fox " * 100):
        want = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert fast.tokenizer.encode(text).ids == want, text


@pytest.mark.parametrize("kw, why", [
    (dict(scheduler="DDIM", num_inference_steps=3), "scheduler DDIM"),
    (dict(width=72), "width 72 is not a multiple of 16"),  # a latent side the UNet cannot halve evenly
    (dict(height=88, num_inference_steps=2), "height 88 is not a multiple of 16"),
])
def test_requests_it_does_not_serve_go_to_the_full_pipeline(fast, full, kw, why):
    req = request(seed=9, **kw)
    assert fast.serves(req) == (False, why)
    logs = []
    got, want = fast.generate(req, log=logs.append), full.generate(req)
    assert [i.tobytes() for i in got] == [i.tobytes() for i in want]


def test_img2img_goes_to_the_full_pipeline(fast, full):
    from PIL import Image

    req = request(seed=2, init_image=Image.new("RGB", (80, 64), (10, 200, 30)), num_inference_steps=4)
    assert fast.serves(req) == (False, "image-to-image")
    assert [i.tobytes() for i in fast.generate(req)] == [i.tobytes() for i in full.generate(req)]


def test_input_rules_are_the_full_pipelines(fast):
    from models.image.generation import ImageInputError

    with pytest.raises(ImageInputError, match="width: 70 is not a multiple of 8"):
        fast.generate(request(width=70))
    with pytest.raises(ImageInputError, match="num_outputs: must be 1-4"):
        fast.generate(request(num_outputs=5))


def test_pipelines_it_cannot_reproduce_are_not_recorded(full, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from models.image import fastpath as image_fastpath

    parts = {k: v for k, v in full.text2img.components.items()}
    other = StableDiffusionPipeline(**{**parts, "scheduler": DDIMScheduler.from_config(parts["scheduler"].config)})
    assert "DDIMScheduler is not EulerDiscreteScheduler" in image_fastpath.unsupported_reason(other, "cpu", False)
    assert "only CPU" in image_fastpath.unsupported_reason(full.text2img, "cuda", False)
    assert "compiled" in image_fastpath.unsupported_reason(full.text2img, "cpu", True)
    assert image_fastpath.unsupported_reason(full.text2img, "cpu", False) is None
    logs = []
    assert not image_fastpath.record(full, tmp_path, "cuda", compiled=False, log=logs.append)
    assert "only CPU" in json.loads((tmp_path / image_fastpath.SKIPPED_FILE).read_text())["reason"]
    assert not (tmp_path / image_fastpath.FASTPATH_DIR).exists()
    assert image_fastpath.load(tmp_path, "cpu", False, full=None) == (None, False)  # no re-record loop


def test_fast_path_imports_neither_diffusers_nor_transformers(recorded):
    code = (
        "import sys; from pathlib import Path\n"
        "from models.image import fastpath as image_fastpath\n"
        "from models.image.generation import ImageRequest\n"
        f"fast, _ = image_fastpath.load(Path({str(recorded)!r}), 'cpu', False, full=None)\n"
        "fast.generate(ImageRequest(prompt='a red fox', num_inference_steps=2, num_outputs=2, seed=1))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers'}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ---------------------------------------------------------------- through the real server


def data_uris(result) -> list[bytes]:
    assert result["status"] == "succeeded", result
    return [base64.b64decode(uri.partition(",")[2]) for uri in result["output"]]


def tamper(root, rel: str, data: bytes) -> None:
    """Overwrite a snapshot file and its checksum, so the snapshot itself still verifies."""
    [path] = (root / "image" / "snapshot").glob(f"*/{rel}")
    path.write_bytes(data)
    meta_path = next(p for p in path.parents if (p / "snapshot.json").is_file()) / "snapshot.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    meta_path.write_text(json.dumps(meta))


def boot(root):
    server = CogServer(get_model("image").runner, env={"COGKIT_WEIGHTS_DIR": str(root)}, setup_timeout=120,
                       root=ROOT)
    server.start().wait_ready()
    return server


def test_server_boots_the_fast_path_and_matches_the_full_boot(image_server, image_weights_root):
    inputs = [{"prompt": "a red fox", "seed": 1, "output_format": "png", "num_outputs": 2},
              {"prompt": "a red fox", "seed": 1, "output_format": "webp", "scheduler": "K_EULER_ANCESTRAL",
               "num_inference_steps": 3}]
    want = [data_uris(image_server.predict(i)) for i in inputs]
    server = boot(image_weights_root)
    try:
        assert "setup: fast path (no diffusers/transformers imported)" in server.setup_log_lines()
        assert [data_uris(server.predict(i)) for i in inputs] == want
    finally:
        server.stop()


@pytest.mark.parametrize("damage", ["unloadable", "mismatched"])
def test_broken_recorded_program_means_a_logged_rebuild(image_server, image_weights_root, tmp_path, damage):
    import torch

    bench_input = get_model("image").bench_input
    want = data_uris(image_server.predict(bench_input))
    root = tmp_path / "weights"
    shutil.copytree(image_weights_root, root)
    if damage == "unloadable":
        tamper(root, "fastpath/unet.pt", b"not a TorchScript archive")
    else:  # loads and runs, but predicts other noise: only the warm-up fingerprint can tell
        class Zero(torch.nn.Module):
            def forward(self, sample, timestep, encoder_hidden_states):
                return sample * 0.5

        args = (torch.zeros(2, 4, 8, 8), torch.tensor(1.0), torch.zeros(2, 77, 32))
        buf = tmp_path / "zero.pt"
        torch.jit.save(torch.jit.trace(Zero(), args), str(buf))
        tamper(root, "fastpath/unet.pt", buf.read_bytes())
    server = boot(root)
    try:
        log = "\n".join(server.setup_log_lines())
        assert data_uris(server.predict(bench_input)) == want
    finally:
        server.stop()
    if damage == "unloadable":
        assert "fast path: cannot load" in log
    else:
        assert "warm-up picture differs from the snapshot's; discarding it" in log
    assert "fast path: recorded" in log and "snapshot: saved" in log
    again = boot(root)  # the rebuilt snapshot boots the fast path again
    try:
        assert "setup: fast path (no diffusers/transformers imported)" in again.setup_log_lines()
        assert data_uris(again.predict(bench_input)) == want
    finally:
        again.stop()
