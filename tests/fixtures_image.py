"""Session fixtures for the image model: the tiny random Stable Diffusion, built once by the real
builder into a temporary weights root, and the real coglet server running ImageRunner on it."""

import pytest

from cogkit.build import build_weights
from tests.servers import serving


@pytest.fixture(scope="session")
def image_weights_root(tmp_path_factory):
    """A weights root whose image/ holds builtin:tiny-sd in float32 (what a CPU runs)."""
    root = tmp_path_factory.mktemp("image-weights")
    build_weights("image", source="builtin:tiny-sd", dtype="float32", dest=root / "image", log=lambda *a: None)
    return root


@pytest.fixture(scope="session")
def image_server(image_weights_root):
    with serving("predict.py:ImageRunner", image_weights_root) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_sdxl_source(tmp_path_factory):
    """A tiny random SDXL-shaped pipeline folder (two text encoders, text-time conditioning, Euler
    ancestral with trailing timesteps like sdxl-turbo): what `--source` gets for real SDXL models."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from models.image.build import make_tiny_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    tok = make_tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                timestep_spacing="trailing")
    StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(config),
                              text_encoder_2=CLIPTextModelWithProjection(config), tokenizer=tok, tokenizer_2=tok,
                              unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder
