"""An SDXL-class source (what sdxl-turbo is) through the builder and the generator, in-process: the
server path is the same code and is covered with the tiny SD pipeline."""

import pytest

from cogkit.build import build_weights
from cogkit.weights import read_manifest


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_source, tmp_path_factory):
    from models.image.generation import ImageGenerator, load_pipeline

    dest = tmp_path_factory.mktemp("sdxl-weights") / "image"
    build_weights("image", source=str(tiny_sdxl_source), dtype="float32", dest=dest, log=lambda *a: None)
    return dest, ImageGenerator(load_pipeline(dest, "cpu", "float32"), "cpu")


def test_sdxl_folder_builds_with_both_text_encoders(sdxl):
    dest, gen = sdxl
    manifest = read_manifest(dest)
    assert manifest["architecture"] == "StableDiffusionXLPipeline"
    assert {"unet", "vae", "text_encoder", "text_encoder_2"} <= set(manifest["parameters"])
    assert type(gen.img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"


def test_sdxl_turbo_style_request_is_deterministic(sdxl):
    from models.image.generation import ImageRequest

    _, gen = sdxl
    request = ImageRequest(prompt="a red fox", seed=1, num_inference_steps=1, guidance_scale=0, num_outputs=2,
                           width=96, height=64)
    a, b = gen.generate(request), gen.generate(request)
    assert [img.size for img in a] == [(96, 64), (96, 64)]
    assert [img.tobytes() for img in a] == [img.tobytes() for img in b]
    assert a[0].tobytes() != a[1].tobytes()


@pytest.mark.parametrize("scheduler", ["DEFAULT", "K_EULER", "DPMSolverMultistep", "DDIM", "PNDM"])
def test_sdxl_schedulers_and_img2img(sdxl, scheduler):
    from models.image.generation import ImageRequest

    _, gen = sdxl
    [text] = gen.generate(ImageRequest(prompt="a red fox", negative_prompt="blurry", seed=2,
                                       num_inference_steps=3, scheduler=scheduler))
    [edited] = gen.generate(ImageRequest(prompt="a red fox", seed=2, num_inference_steps=4, scheduler=scheduler,
                                         init_image=text, prompt_strength=0.5))
    assert text.size == edited.size == (64, 64)
