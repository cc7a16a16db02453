"""Text-to-image and image-to-image with a diffusers pipeline: loading, per-request scheduler, seeding,
input checks and file encoding. predict.py keeps only the Cog inputs; the rules live here.
"""

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

SIZE_MULTIPLE = 8  # the VAE turns 8x8 pixel blocks into one latent pixel
MIN_SIZE, MAX_SIZE = 64, 1024

# Replicate's names for the usual samplers -> diffusers scheduler classes. DEFAULT is the scheduler the
# pipeline ships with (e.g. sdxl-turbo's own Euler ancestral settings).
SCHEDULERS = {
    "DEFAULT": None,
    "DDIM": "DDIMScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "K_EULER": "EulerDiscreteScheduler",
    "K_EULER_ANCESTRAL": "EulerAncestralDiscreteScheduler",
    "PNDM": "PNDMScheduler",
}

# output_format -> (Pillow format, file extension)
OUTPUT_FORMATS = {"webp": ("WEBP", "webp"), "jpg": ("JPEG", "jpg"), "png": ("PNG", "png")}


class ImageInputError(ValueError):
    """A request the pipeline cannot run; the message names the input and the rule."""


@dataclass
class ImageRequest:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the model's native size (text-to-image) or the input image's
    height: int | None = None
    num_outputs: int = 1
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = "DEFAULT"
    seed: int = 0
    init_image: object | None = None  # a PIL image for image-to-image
    prompt_strength: float = 0.8


# ---------------------------------------------------------------- input rules


def check_size(name: str, value: int | None) -> None:
    if value is None:
        return
    if value % SIZE_MULTIPLE:
        lower = max(MIN_SIZE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
        raise ImageInputError(f"{name}: {value} is not a multiple of {SIZE_MULTIPLE} "
                              f"(the VAE works on {SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixel blocks); try {lower}")
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise ImageInputError(f"{name}: {value} is outside {MIN_SIZE}-{MAX_SIZE}")


def round_size(value: float) -> int:
    return int(min(MAX_SIZE, max(MIN_SIZE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)))


def img2img_size(image_size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """Output size for image-to-image: width/height when given (the missing one keeps the input's
    aspect ratio); otherwise the input's own size, scaled down to fit 1024x1024 and rounded down to
    multiples of 8."""
    w, h = image_size
    if width and height:
        return width, height
    if width:
        return width, round_size(width * h / w)
    if height:
        return round_size(height * w / h), height
    scale = min(1.0, MAX_SIZE / max(w, h))
    return round_size(w * scale), round_size(h * scale)


def open_image(path: Path):
    """The input image as RGB, decoded fully now so that a truncated or corrupt file fails here."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"image: too large to decode ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for bad files
        raise ImageInputError(f"image: not a readable image file (PNG, JPEG, WebP, ...): "
                              f"{type(e).__name__}: {e}") from None


class PromptLength:
    """Says what of a prompt the text encoder will not see: CLIP reads at most 77 tokens (start and end
    included) and the pipeline truncates the rest; this names the dropped part so it can be logged."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        # A private copy of the fast tokenizer: the pipeline leaves padding/truncation switched on in
        # the shared one, and counting through it would count padding.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self.room = tokenizer.model_max_length - 2
        self.limit = tokenizer.model_max_length

    def dropped(self, text: str) -> str:
        if not text:
            return ""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if len(ids) <= self.room:
            return ""
        # CLIP's BPE marks word ends with "</w>"; its decoder leaves them in.
        return self.backend.decode(ids[self.room:]).replace("</w>", " ").strip()


# ---------------------------------------------------------------- the pipeline


def import_runtime() -> None:
    """Import what loading a pipeline needs (diffusers, transformers' CLIP), so that setup's "imports"
    phase holds the import time and "load" only the reading of weights."""
    import diffusers  # noqa: F401
    from diffusers import AutoPipelineForImage2Image, DiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def load_pipeline(folder: Path, device: str, dtype: str):
    """The pipeline stored in `folder`, on `device`, computing in `dtype`."""
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # bars would flood the prediction server's log
    transformers.utils.logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype(dtype), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if device == "cpu":
        align_weights(pipe)
    return pipe


def align_weights(pipe) -> None:
    """Give each CPU weight memory of its own, 64-byte aligned, where it is not. Weights read from a
    safetensors file start wherever the file puts them, and on this AVX-512 CPU a batch-1 UNet call on
    misaligned weights rounded differently (up to 1e-6) from the same call on aligned ones; the fast
    path's TorchScript programs get aligned weights from torch.jit.load, so without this they could not
    give the pipeline's exact bytes (models/image/fastpath.py checks that before recording one)."""
    import itertools

    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in itertools.chain(component.parameters(), component.buffers()):
                if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()


def optimise(pipe, device: str, compile_unet: bool) -> list[str]:
    """Speed-ups switched on where they pay: on a GPU, channels-last convolutions and one fused QKV
    matmul per attention (on CPU they are slower or do nothing); torch.compile of the UNet when asked.
    Returns what was switched on."""
    import torch

    done = []
    if device.startswith("cuda"):
        # Same seed, same pixels: no autotuned (run-to-run varying) convolution algorithms.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
                done.append(f"{name}:channels_last")
        if hasattr(pipe.unet, "fuse_qkv_projections"):
            pipe.unet.fuse_qkv_projections()
            done.append("unet:fused_qkv")
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
        done.append("unet:compiled")
    return done


class ImageGenerator:
    def __init__(self, pipe, device: str):
        from diffusers import AutoPipelineForImage2Image

        self.device = device
        self.text2img = pipe
        self.img2img = AutoPipelineForImage2Image.from_pipe(pipe)  # shares the models, no copy
        self.img2img.set_progress_bar_config(disable=True)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.default_scheduler = type(pipe.scheduler)
        self.native_size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        self.prompt_length = PromptLength(pipe.tokenizer)

    def optimise(self, compile_unet: bool) -> list[str]:
        done = optimise(self.text2img, self.device, compile_unet)
        self.img2img.unet = self.text2img.unet  # the compiled UNet serves both pipelines
        return done

    def scheduler(self, name: str):
        """A fresh scheduler per request: schedulers keep per-run state, and the same seed must give
        the same picture whatever ran before."""
        import diffusers

        if name not in SCHEDULERS:
            raise ImageInputError(f"scheduler: {name!r} is not one of {', '.join(SCHEDULERS)}")
        if SCHEDULERS[name] is None:
            return self.default_scheduler.from_config(self.scheduler_config)
        # PNDM as Stable Diffusion ships it: PLMS only; its Runge-Kutta warm-up needs many steps.
        overrides = {"skip_prk_steps": True} if name == "PNDM" else {}
        return getattr(diffusers, SCHEDULERS[name]).from_config(self.scheduler_config, **overrides)

    def generate(self, req: ImageRequest, log=print) -> list:
        import torch

        check_size("width", req.width)
        check_size("height", req.height)
        if not 1 <= req.num_outputs <= 4:
            raise ImageInputError("num_outputs: must be 1-4")
        for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
            if dropped := self.prompt_length.dropped(text):
                log(f"{name}: longer than the text encoder's {self.prompt_length.limit} tokens; "
                    f"truncated, dropping: {dropped!r}")
        # Noise comes from a CPU generator, so a seed gives the same starting latents on any device.
        generator = torch.Generator("cpu").manual_seed(req.seed)
        common = dict(prompt=req.prompt, negative_prompt=req.negative_prompt or None,
                      num_images_per_prompt=req.num_outputs, num_inference_steps=req.num_inference_steps,
                      guidance_scale=req.guidance_scale, generator=generator)
        if req.init_image is None:
            pipe = self.text2img
            width, height = req.width or self.native_size, req.height or self.native_size
            kwargs = dict(width=width, height=height)
        else:
            if int(req.num_inference_steps * req.prompt_strength) < 1:
                raise ImageInputError(
                    f"prompt_strength: {req.prompt_strength} x num_inference_steps {req.num_inference_steps} "
                    "leaves no denoising step; raise either so that their product is at least 1")
            pipe = self.img2img
            width, height = img2img_size(req.init_image.size, req.width, req.height)
            image = req.init_image.resize((width, height), resample=3)  # bicubic
            kwargs = dict(image=image, strength=req.prompt_strength)
        pipe.scheduler = self.scheduler(req.scheduler)
        with torch.inference_mode():
            return pipe(**common, **kwargs).images


def encode_images(images, output_format: str, quality: int, folder: Path | None = None) -> list[Path]:
    """Write each picture as output_format. The encoders add no timestamps, so the same pixels give the
    same bytes. quality applies to webp and jpg; png is lossless."""
    pil_format, ext = OUTPUT_FORMATS[output_format]
    folder = Path(folder or tempfile.mkdtemp(prefix="cogkit-image-"))
    paths = []
    for i, img in enumerate(images):
        options = {} if pil_format == "PNG" else {"quality": quality}
        if pil_format == "WEBP":
            options["method"] = 4  # Pillow's default effort, named so it never drifts
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=pil_format, **options)
        path = folder / f"out-{i}.{ext}"
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        paths.append(path)
    return paths
