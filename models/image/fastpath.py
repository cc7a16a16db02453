"""A diffusers-free boot for the image predictor, recorded in its snapshot.

Importing diffusers and transformers is most of the image predictor's boot on CPU (seconds), while a
Stable Diffusion request only needs three networks, a tokenizer and a noise schedule. So the first boot
(the full diffusers pipeline) records into its snapshot, under `fastpath/`:

- the text encoder, UNet and VAE decoder as TorchScript programs traced from the loaded pipeline
  (`torch.jit.load` takes about 0.1 s for the tiny pipeline; `torch.export.load` took about 3.4 s,
  as long as importing diffusers, so export is not used);
- the tokenizer as a `tokenizers` tokenizer.json, padded and truncated as the pipeline does;
- the default scheduler's timesteps and sigmas for every step count a request may ask for (this
  module implements only the Euler step arithmetic, exactly as diffusers' EulerDiscreteScheduler).

A later boot with that snapshot imports only torch, tokenizers, numpy and Pillow. The fast path serves
text-to-image with the DEFAULT scheduler at sizes whose latents the UNet down- and upsamples evenly;
anything else (another scheduler, image-to-image, another size) loads the full pipeline on first use,
logged, so every request gets exactly what the full pipeline gives. Before recording, the fast path is
checked against the full pipeline on requests unlike the warm-up; at boot, its warm-up picture must
match the recorded fingerprint (predict.py), otherwise the snapshot is discarded.
"""

import json
import shutil
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

FASTPATH_DIR = "fastpath"
CONFIG_FILE = "fastpath.json"
PROGRAMS = {"text_encoder": "text_encoder.pt", "unet": "unet.pt", "vae_decoder": "vae_decoder.pt"}
TOKENIZER_FILE = "tokenizer.json"
SKIPPED_FILE = "fastpath-skipped.json"  # in the snapshot when no fast path was recorded, with the reason
MAX_STEPS = 100  # predict.py's num_inference_steps bound
FORMAT = 1  # bump when the files' meaning changes


class FastPathUnavailable(Exception):
    """The pipeline or request is outside what the fast path reproduces exactly."""


# ---------------------------------------------------------------- what can be recorded


def unsupported_reason(pipe, device: str, compiled: bool) -> str | None:
    """Why this pipeline cannot get a fast path, or None when it can."""
    if not device.startswith("cpu"):
        return f"device {device}: only CPU boots use the fast path (GPU optimisations are not traced)"
    if compiled:
        return "the UNet is torch.compiled"
    if type(pipe).__name__ != "StableDiffusionPipeline":
        return f"{type(pipe).__name__} is not a StableDiffusionPipeline"
    if getattr(pipe, "safety_checker", None) is not None:
        return "the pipeline has a safety checker"
    unet = pipe.unet.config
    if unet.time_cond_proj_dim is not None or unet.addition_embed_type is not None:
        return "the UNet takes extra conditioning"
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        return "the text encoder takes an attention mask"
    sched = pipe.scheduler
    if type(sched).__name__ != "EulerDiscreteScheduler":
        return f"default scheduler {type(sched).__name__} is not EulerDiscreteScheduler"
    if sched.config.prediction_type != "epsilon" or sched.config.timestep_type != "discrete":
        return "the scheduler predicts something other than discrete-timestep epsilon"
    if sched.order != 1:
        return "the scheduler is not first order"
    return None


def _wrappers(pipe):
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(ids, attention_mask=None)[0]

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latents):
            return self.m.decode(latents, return_dict=False)[0]

    return TextEncoder(pipe.text_encoder), UNet(pipe.unet), VaeDecoder(pipe.vae)


def trace_programs(pipe, native_size: int):
    """The three networks as TorchScript, traced at the shapes the pipeline calls them with at the
    native size (a prompt at a time; a CFG batch of two latents). Traced graphs read batch and spatial
    sizes at run time; which sizes they serve is checked before recording (check_against)."""
    import torch

    text_encoder, unet, vae_decoder = _wrappers(pipe)
    dtype = pipe.unet.dtype
    side = native_size // pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    ids = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long)
    latents = torch.zeros(2, channels, side, side, dtype=dtype)
    hidden = torch.zeros(2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size, dtype=dtype)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape checks
        return {
            "text_encoder": torch.jit.trace(text_encoder.eval(), (ids,), check_trace=False),
            "unet": torch.jit.trace(unet.eval(), (latents, torch.tensor(999.0), hidden), check_trace=False),
            "vae_decoder": torch.jit.trace(vae_decoder.eval(), (latents,), check_trace=False),
        }


def tokenizer_json(tokenizer) -> str:
    """The pipeline's tokenizer as a standalone `tokenizers` tokenizer that pads and truncates to the
    text encoder's length, as the pipeline's call does (padding="max_length", truncation=True)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=tokenizer.model_max_length)
    backend.enable_padding(length=tokenizer.model_max_length, pad_id=tokenizer.pad_token_id,
                           pad_token=tokenizer.pad_token)
    return backend.to_str()


def schedules(scheduler_class, scheduler_config: dict) -> dict:
    """The default scheduler's timesteps, sigmas and initial noise scale for each step count, as
    diffusers computes them (float32 values survive JSON exactly)."""
    table = {}
    for steps in range(1, MAX_STEPS + 1):
        sched = scheduler_class.from_config(scheduler_config)
        sched.set_timesteps(steps, device="cpu")
        if sched.index_for_timestep(sched.timesteps[0]) != 0:
            continue  # repeated timesteps: diffusers starts mid-schedule; leave it to the full path
        table[str(steps)] = {"timesteps": sched.timesteps.tolist(), "sigmas": sched.sigmas.tolist(),
                             "init_noise_sigma": float(sched.init_noise_sigma)}
    return table


def record(generator, folder: Path, device: str, compiled: bool, log=print) -> bool:
    """Write `folder/fastpath/` for the full-path ImageGenerator `generator`, after checking that the
    fast path gives the same pictures; otherwise `folder/fastpath-skipped.json` with the reason.
    Never raises: without a fast path the snapshot still works."""
    reason = _record(generator, Path(folder), device, compiled)
    if reason is None:
        log("fast path: recorded")
        return True
    log(f"fast path: not recorded ({reason})")
    (Path(folder) / SKIPPED_FILE).write_text(json.dumps({"reason": reason}))
    return False


def _record(generator, folder: Path, device: str, compiled: bool) -> str | None:
    target = folder / FASTPATH_DIR
    try:
        import torch

        pipe = generator.text2img
        if reason := unsupported_reason(pipe, device, compiled):
            return reason
        tmp = folder / f".{FASTPATH_DIR}.partial"
        tmp.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see FastImageGenerator.__init__
            for name, program in trace_programs(pipe, generator.native_size).items():
                torch.jit.save(program, str(tmp / PROGRAMS[name]))
        (tmp / TOKENIZER_FILE).write_text(tokenizer_json(pipe.tokenizer))
        config = {
            "format": FORMAT, "native_size": generator.native_size, "vae_scale_factor": pipe.vae_scale_factor,
            "latent_multiple": 2 ** pipe.unet.num_upsamplers, "latent_channels": pipe.unet.config.in_channels,
            "scaling_factor": pipe.vae.config.scaling_factor, "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "model_max_length": pipe.tokenizer.model_max_length,
            "schedules": schedules(generator.default_scheduler, generator.scheduler_config),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config))
        fast = FastImageGenerator(tmp, device, full=lambda: generator)
        if problem := check_against(fast, generator):
            shutil.rmtree(tmp, ignore_errors=True)
            return problem
        tmp.rename(target)
        return None
    except Exception as e:  # noqa: BLE001 - the snapshot goes on without a fast path
        shutil.rmtree(folder / f".{FASTPATH_DIR}.partial", ignore_errors=True)
        return f"{type(e).__name__}: {e}"


# Requests unlike the warm-up (which the next boot checks): two outputs, a size other than the traced
# one, guidance with a negative prompt, and without guidance.
CHECK_REQUESTS = (
    dict(prompt="a red fox in the forest", negative_prompt="blurry", num_outputs=2, num_inference_steps=3,
         guidance_scale=7.5, seed=5, height_delta=0, width_delta=1),
    dict(prompt="a cat", num_outputs=1, num_inference_steps=2, guidance_scale=1.0, seed=6, height_delta=1,
         width_delta=2),
)


def check_against(fast, full) -> str | None:
    """Compare the fast path with the full pipeline on CHECK_REQUESTS; a description of the first
    difference, or None when every picture matches byte for byte."""
    from models.image.generation import MAX_SIZE, ImageRequest

    step = fast.config["vae_scale_factor"] * fast.config["latent_multiple"]
    for spec in CHECK_REQUESTS:
        spec = dict(spec)
        native = fast.config["native_size"]
        height = min(MAX_SIZE, native + step * spec.pop("height_delta"))
        width = min(MAX_SIZE, native + step * spec.pop("width_delta"))
        req = ImageRequest(width=width, height=height, **spec)
        if not fast.serves(req)[0]:
            continue
        got = fast.generate_fast(req, log=lambda m: None)
        want = full.generate(req, log=lambda m: None)
        if [(i.size, i.tobytes()) for i in got] != [(i.size, i.tobytes()) for i in want]:
            return f"its pictures differ from the full pipeline's for {width}x{height}, {spec}"
    return None


# ---------------------------------------------------------------- the fast generator


class FastImageGenerator:
    """Same interface as models.image.generation.ImageGenerator (generate), from a recorded fastpath/
    folder; `full` returns the full-path generator, called on the first request the fast path does not
    serve."""

    def __init__(self, folder: Path, device: str, full, log=print):
        import torch
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.config = json.loads((folder / CONFIG_FILE).read_text())
        if self.config.get("format") != FORMAT:
            raise FastPathUnavailable(f"{CONFIG_FILE} has format {self.config.get('format')}, not {FORMAT}")
        self.device = device
        self.dtype = getattr(torch, self.config["dtype"])
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, whose load is ~30x slower here (see
            # the module docstring); the snapshot key holds the torch version, and a torch without
            # TorchScript records no fast path (full boots, nothing breaks).
            warnings.simplefilter("ignore", DeprecationWarning)
            self.programs = {name: torch.jit.load(str(folder / file), map_location=device).eval()
                             for name, file in PROGRAMS.items()}
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.native_size = self.config["native_size"]
        self._make_full = full
        self._full = None
        self._full_lock = threading.Lock()
        self.log = log
        # models.image.generation.PromptLength reads a transformers-like tokenizer; these two fields.
        from models.image.generation import PromptLength

        self.prompt_length = PromptLength(SimpleNamespace(backend_tokenizer=self.tokenizer,
                                                          model_max_length=self.config["model_max_length"]))

    def full(self):
        with self._full_lock:
            if self._full is None:
                self._full = self._make_full()
            return self._full

    def serves(self, req) -> tuple[bool, str]:
        """Whether the fast path gives exactly the full pipeline's pictures for `req`, and if not, why."""
        if req.init_image is not None:
            return False, "image-to-image"
        if req.scheduler != "DEFAULT":
            return False, f"scheduler {req.scheduler}"
        if str(req.num_inference_steps) not in self.config["schedules"]:
            return False, f"{req.num_inference_steps} steps"
        multiple = self.config["vae_scale_factor"] * self.config["latent_multiple"]
        for name, value in (("width", req.width), ("height", req.height)):
            if (value or self.native_size) % multiple:
                return False, f"{name} {value} is not a multiple of {multiple}"
        return True, ""

    def generate(self, req, log=print) -> list:
        from models.image.generation import ImageInputError, check_size

        check_size("width", req.width)
        check_size("height", req.height)
        if not 1 <= req.num_outputs <= 4:
            raise ImageInputError("num_outputs: must be 1-4")
        ok, why = self.serves(req)
        if not ok:
            if self._full is None:
                log(f"fast path: {why} needs the full diffusers pipeline; loading it (once)")
            return self.full().generate(req, log=log)
        return self.generate_fast(req, log)

    # The arithmetic below mirrors diffusers' StableDiffusionPipeline.__call__ with
    # EulerDiscreteScheduler, operation for operation, so the pictures are the same bytes.

    def encode(self, text: str):
        import torch

        ids = torch.tensor([self.tokenizer.encode(text).ids], dtype=torch.long, device=self.device)
        return self.programs["text_encoder"](ids).to(dtype=self.dtype, device=self.device)

    def embeddings(self, prompt: str, negative_prompt: str, copies: int, guided: bool):
        def repeated(embeds):
            batch, seq_len, _ = embeds.shape
            return embeds.repeat(1, copies, 1).view(batch * copies, seq_len, -1)

        embeds = repeated(self.encode(prompt))
        if not guided:
            return embeds
        import torch

        return torch.cat([repeated(self.encode(negative_prompt or "")), embeds])

    def generate_fast(self, req, log=print) -> list:
        import numpy as np
        import torch
        from PIL import Image

        for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
            if dropped := self.prompt_length.dropped(text):
                log(f"{name}: longer than the text encoder's {self.prompt_length.limit} tokens; "
                    f"truncated, dropping: {dropped!r}")
        schedule = self.config["schedules"][str(req.num_inference_steps)]
        height, width = req.height or self.native_size, req.width or self.native_size
        guided = req.guidance_scale > 1
        generator = torch.Generator("cpu").manual_seed(req.seed)
        # optimized_execution(False): TorchScript's interpreter runs the traced aten ops as they are,
        # without profiling passes that could rewrite them after the first calls.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            embeds = self.embeddings(req.prompt, req.negative_prompt, req.num_outputs, guided)
            timesteps = torch.tensor(schedule["timesteps"], dtype=torch.float32)
            sigmas = torch.tensor(schedule["sigmas"], dtype=torch.float32)
            scale = self.config["vae_scale_factor"]
            shape = (req.num_outputs, self.config["latent_channels"], height // scale, width // scale)
            latents = torch.randn(shape, generator=generator, device="cpu", dtype=embeds.dtype).to(self.device)
            latents = latents * torch.tensor(schedule["init_noise_sigma"], dtype=torch.float32)
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if guided else latents
                sigma = sigmas[i]
                model_input = model_input / ((sigma**2 + 1) ** 0.5)
                noise = self.programs["unet"](model_input, t, embeds)
                if guided:
                    uncond, text = noise.chunk(2)
                    noise = uncond + req.guidance_scale * (text - uncond)
                latents = euler_step(noise, latents, sigma, sigmas[i + 1])
            image = self.programs["vae_decoder"](latents / self.config["scaling_factor"])
            image = torch.stack([(image[i] * 0.5 + 0.5).clamp(0, 1) for i in range(image.shape[0])])
            pixels = image.cpu().permute(0, 2, 3, 1).float().numpy()
        pixels = (pixels * 255).round().astype("uint8")
        return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def euler_step(model_output, sample, sigma, sigma_next):
    """EulerDiscreteScheduler.step with its defaults (no churn, epsilon prediction)."""
    import torch

    sample = sample.to(torch.float32)
    sigma_hat = sigma * (0.0 + 1)
    pred_original_sample = sample - sigma_hat * model_output
    derivative = (sample - pred_original_sample) / sigma_hat
    dt = sigma_next - sigma_hat
    return (sample + derivative * dt).to(model_output.dtype)


# ---------------------------------------------------------------- boot


def load(restored: Path | None, device: str, compiled: bool, full, log=print):
    """(the fast generator, or None; whether the snapshot should be re-recorded). None when the snapshot
    has no fast path or it cannot be loaded (logged); the caller then boots the full pipeline, and
    re-records the snapshot when its fast path is broken or was never tried (a snapshot from before
    fast paths)."""
    if restored is None or not device.startswith("cpu") or compiled:
        return None, False
    folder = Path(restored) / FASTPATH_DIR
    if (Path(restored) / SKIPPED_FILE).is_file():
        return None, False
    if not (folder / CONFIG_FILE).is_file():
        log("fast path: the snapshot has none; booting the full pipeline and recording it again")
        return None, True
    try:
        return FastImageGenerator(folder, device, full, log=log), False
    except Exception as e:  # noqa: BLE001 - a bad fast path must not fail the boot
        log(f"fast path: cannot load ({type(e).__name__}: {e}); booting the full pipeline and "
            "recording the snapshot again")
        return None, True
