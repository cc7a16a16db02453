"""The image model's build step: turn a diffusers pipeline folder into the folder the predictor boots from.

Sources: any diffusers pipeline folder (`model_index.json` plus one folder per component), e.g. a local
copy of stabilityai/sdxl-turbo or a Stable Diffusion 1.5 repo, or `builtin:tiny-sd`, a tiny
random-weight Stable Diffusion pipeline generated here from configs (its pictures are noise; it exists
so that everything runs offline and fast). Output: the same pipeline layout, every model stored as
safetensors in the dtype the predictor computes in, so boot does no conversion.
"""

import json
from pathlib import Path

BUILTIN_SOURCES = ("tiny-sd",)
# What the predictor uses of a pipeline (a UNet-based Stable Diffusion: SD 1.x/2.x, SDXL, sdxl-turbo).
REQUIRED_PARTS = ("unet", "vae", "tokenizer", "text_encoder", "scheduler")


def runtime_dtype() -> str:
    """Half precision on GPU (bf16 where the GPU computes it natively: it does not overflow in the
    VAE like fp16 can; fp16 on older GPUs such as the T4); fp32 on CPU, where half precision is slow."""
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


def convert(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from diffusers import DiffusionPipeline

    source = Path(source)
    if not (source / "model_index.json").is_file():
        raise ValueError(f"source: {source} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads((source / "model_index.json").read_text())
    missing = [part for part in REQUIRED_PARTS if part not in index]
    if missing:
        raise ValueError(f"source: {source} holds a {index.get('_class_name', 'pipeline')} without "
                         f"{', '.join(missing)}; the image predictor runs UNet-based Stable Diffusion "
                         "pipelines (SD 1.x/2.x, SDXL, sdxl-turbo)")
    pipe = DiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype), local_files_only=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return {"dtype": dtype, **pipeline_facts(pipe)}


def pipeline_facts(pipe) -> dict:
    """What the manifest records about a pipeline: its class, native size and model sizes."""
    import torch

    parameters = {name: sum(p.numel() for p in module.parameters())
                  for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    return {"architecture": type(pipe).__name__, "native_size": native_size(pipe), "parameters": parameters}


def native_size(pipe) -> int:
    """The picture size the UNet was trained for: its latent sample size times the VAE's scale."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


# ---------------------------------------------------------------- builtin:tiny-sd

# A handful of merges so common words become a few tokens instead of one per letter.
TINY_MERGE_WORDS = ("a", "red", "fox", "cat", "dog", "the", "in", "on", "of", "photo", "painting", "forest")


def builtin_source(name: str, folder: Path) -> Path:
    if name not in BUILTIN_SOURCES:
        known = ", ".join(f"builtin:{n}" for n in BUILTIN_SOURCES)
        raise ValueError(f"source builtin:{name}: unknown; the image model knows {known}")
    make_tiny_sd(Path(folder))
    return Path(folder)


def make_tiny_clip_tokenizer():
    """A CLIP byte-level BPE tokenizer with a small vocab: every byte alone and word-final, a few merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges = []  # transformers 5 wants (left, right) tuples
    for word in TINY_MERGE_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            left, right = pieces[0], pieces[1]
            if (left, right) not in merges:
                merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
            pieces = [left + right] + pieces[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def make_tiny_sd(folder: Path) -> None:
    """A Stable Diffusion 1.5-shaped pipeline small enough to render 64x64 in a fraction of a second on
    CPU. Weights are random but seeded, so the same torch version writes the same files."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )
    torch.manual_seed(1)
    # Four levels, like SD's VAE: a latent pixel is 8x8 image pixels, hence sizes in multiples of 8.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    # SD 1.5's noise schedule.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text(
        "Tiny random-weight Stable Diffusion pipeline generated by cogkit (models/image/build.py). "
        "Its pictures are noise.\n")
    json.loads((folder / "model_index.json").read_text())  # fail here, not at boot, if it is unreadable


# ---------------------------------------------------------------- boot


def compute_dtype(stored: str, device: str) -> str:
    """The dtype the predictor runs in: the stored one on GPU; fp32 on CPU, where half precision is slow."""
    return stored if device.startswith("cuda") else "float32"


def compiles_unet(device: str) -> bool:
    """torch.compile the UNet only when asked (COGKIT_COMPILE=1). Unlike the LLM's fixed-shape decode
    step, every new width, height or num_outputs is a new shape and recompiles (tens of seconds on a
    GPU, about a minute on CPU for the tiny UNet), which a user would pay on their request."""
    import os

    return os.environ.get("COGKIT_COMPILE") == "1"


def snapshot_extra(device: str, folder: Path | None = None) -> dict:
    """The image predictor's part of its snapshot key (cogkit/snapshot.py)."""
    from cogkit.weights import read_manifest, weights_dir

    stored = read_manifest(Path(folder) if folder else weights_dir("image"))["dtype"]
    return {"dtype": compute_dtype(stored, device), "compile": compiles_unet(device)}
