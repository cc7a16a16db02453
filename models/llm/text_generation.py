"""Token generation for the LLM predictor: chat template, sampling, streaming text with stop sequences.

Runs on torch (or CTranslate2, for weights built with `--engine ctranslate2`), `tokenizers` and jinja2
only; transformers is needed to build weights, not to boot. torch is imported only by the torch engine.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from models.llm.chat_template import ChatTemplate


class PromptTooLongError(ValueError):
    pass


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.6  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int = 0


@dataclass
class GenerationStats:
    input_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    output_tokens: int = 0
    time_to_first_token: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    token_ids: list[int] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        # Decode speed after the first token, the figure LLM servers usually report.
        decoded = self.output_tokens - 1
        return decoded / self.decode_seconds if decoded > 0 and self.decode_seconds > 0 else 0.0


@dataclass
class Request:
    """One generation. `emit` is called from the engine thread with ("text", str), then once with
    ("done", None) or ("error", exception). Set `cancelled` from any thread to drop it."""
    prompt_ids: list[int]
    sampling: Sampling
    stop_sequences: list[str]
    emit: Callable[[tuple], None]
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancelled: bool = False


@dataclass
class Generation:
    """One request inside an engine (models/llm/engine.py, ct2_engine.py): its text stream, its
    budget and what a produced token does to it, the same whichever engine produced the token."""
    request: Request
    stream: TextStream
    max_new: int
    submitted_at: float
    first_token_at: float = 0.0
    finished: bool = False

    @classmethod
    def start(cls, request: Request, tokenizer: Tokenizer, context_length: int, **fields):
        """Raises PromptTooLongError/ValueError at once for a prompt that cannot run."""
        n_prompt = len(request.prompt_ids)
        if n_prompt == 0:
            raise ValueError("prompt: the prompt is empty after tokenization")
        if n_prompt >= context_length:
            raise PromptTooLongError(
                f"prompt: {n_prompt} tokens does not fit the model's context of {context_length} "
                "tokens; shorten the prompt or system_prompt")
        request.stats.input_tokens = n_prompt
        return cls(request, TextStream(tokenizer, request.stop_sequences),
                   max_new=min(request.sampling.max_new_tokens, context_length - n_prompt),
                   submitted_at=time.perf_counter(), **fields)

    def take(self, token: int, eos_ids: set[int]) -> bool:
        """Record and stream one produced token; False once the generation has finished."""
        stats = self.request.stats
        now = time.perf_counter()
        if self.first_token_at == 0.0:
            stats.time_to_first_token = now - self.submitted_at
            self.first_token_at = now
        if token in eos_ids:
            stats.stop_reason = "eos"
            return self.finish()
        stats.output_tokens += 1
        stats.token_ids.append(token)
        piece = self.stream.push(token)
        if piece:
            self.request.emit(("text", piece))
        stats.decode_seconds = now - self.first_token_at
        if self.stream.stopped:
            stats.stop_reason = "stop_sequence"
            return self.finish()
        if stats.output_tokens >= self.max_new:
            stats.stop_reason = "length"
            return self.finish()
        return True

    def finish(self, final: tuple = ("done", None)) -> bool:
        """Flush the held-back text (unless it failed) and tell the consumer; returns False."""
        self.finished = True
        if final[0] == "done":
            tail = self.stream.flush()
            if tail:
                self.request.emit(("text", tail))
        self.request.emit(final)
        return False


def pick_next_token(logits, s: Sampling, generator) -> int:
    """Greedy at temperature 0; otherwise temperature, top-k, then nucleus (top-p) sampling."""
    import torch

    if s.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = sorted_probs.cumsum(-1) - sorted_probs > s.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into one of `stops`."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextStream:
    """Turns generated token ids into text pieces, holding back what may belong to a stop sequence."""

    def __init__(self, tokenizer: Tokenizer, stop_sequences: list[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stop_sequences if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            return ""
        hits = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._emit(text, min(hits))
        return self._emit(text, len(text) - stop_prefix_len(text, self.stops))

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True), None)

    def _emit(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece = text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def weights_engine(folder: Path) -> str:
    """The runtime a weights folder was built for (manifest `engine`; folders built before it: torch)."""
    manifest = Path(folder) / "manifest.json"
    engine = json.loads(manifest.read_text()).get("engine") if manifest.is_file() else None
    return engine or "torch"


class TextGenerator:
    """A loaded LLM: model, tokenizer and chat template from one built weights folder, and the
    batching engine that runs its generations (up to `max_batch` at once)."""

    def __init__(self, folder: Path, device: str = "cpu", max_batch: int = 1):
        folder = Path(folder)
        self.device = device
        self.compiled = False  # compile_decode() ran
        self.engine_name = weights_engine(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
        self.special = {k: tok_cfg.get(k) for k in ("bos_token", "eos_token")}
        template = tok_cfg.get("chat_template")
        self.chat_template = ChatTemplate(template, self.special) if template else None
        config = json.loads((folder / "config.json").read_text())
        eos = config.get("eos_token_id")
        self.eos_ids = set([] if eos is None else [eos] if isinstance(eos, int) else eos)
        self.context_length = config["max_position_embeddings"]
        # No token is longer than this many characters: a lower bound on any text's token count.
        self.max_token_chars = max(len(t) for t in self.tokenizer.get_vocab()) + 1
        if self.engine_name == "ctranslate2":
            from models.llm.ct2_engine import CT2Engine

            self.model = None
            self.engine = CT2Engine(folder, self.tokenizer, self.eos_ids, self.context_length, max_batch,
                                    device, dtype=config.get("dtype", "float32"))
        else:
            from models.llm.engine import BatchEngine
            from models.llm.llama import load_llama

            self.model = load_llama(folder, device, batched=max_batch > 1)
            self.engine = BatchEngine(self.model, self.tokenizer, self.eos_ids, self.context_length, max_batch)

    def forward_on_onnxruntime(self):
        """Start building onnxruntime's graph of the model's forward on a thread (models/llm/ort_forward.py);
        the engine's prompt chunks and decode steps move to it once it is ready (an int8 model's wait for it).
        Returns the thread (None: the model is one it does not cover, and a setup line says why)."""
        import torch

        from models.llm.ort_forward import build_in_background

        thread = build_in_background(self.model, torch.get_num_threads())
        if thread is not None and self.model.rows_independent:
            # An int8 model's text on the graph is not its text on torch (int8 rounding amplifies the
            # engines' float differences), so its requests wait for the graph (~1-2 s after READY)
            # rather than answer otherwise in the first seconds.
            self.engine.graph_pending = thread
        return thread

    def compile_decode(self) -> None:
        """Compile the model's forward (on GPU by default, on CPU with COGKIT_COMPILE=1): shapes vary
        with the batch and the filled cache length, so it is compiled with dynamic shapes once rather
        than once per shape. Calls on oneDNN's packed CPU weights (several rows, see
        `Llama.use_packed_weights`) stay eager: Inductor has no lowering for that op (the first batch
        failed with a LoweringException), and the packed weights are what makes CPU batches fast."""
        import torch

        model = self.model
        model.setup_cache(self.context_length, slots=self.engine.max_batch)
        eager = model.forward
        compiled = torch.compile(eager, dynamic=True)
        model.forward = lambda *args, **kwargs: (eager if model.packed_in_use else compiled)(*args, **kwargs)
        self.compiled = True

    def warmup(self, max_new_tokens: int = 2) -> list[int]:
        """A tiny greedy generation that runs the prefill and the decode path once (and compiles both,
        when enabled). Returns its tokens, which a restored snapshot must reproduce. The prompt has two
        tokens or more: a one-token prompt ("Hello" for SmolLM2) prefills with the decode step's
        shape, and a compiled model then compiled its prefill at the first real request (78 s)."""
        stats = GenerationStats()
        for _ in self.generate(self.encode("Hello there"), Sampling(max_new_tokens=max_new_tokens, temperature=0),
                               [], stats):
            pass
        if self.compiled and self.engine.max_batch > 1:
            self._warm_a_batch(max_new_tokens)
        return stats.token_ids

    def _warm_a_batch(self, max_new_tokens: int) -> None:
        """Two prompts prefilled and decoded together. A compiled forward is traced for one row first,
        and a size of 1 is a constant to the compiler, so the first batch compiled again (graphs of
        any row count, at a request, measured on CPU with no packed copies as on a GPU: 2 more graphs);
        here, at setup. Submitted under the engine's lock so that it admits them together. Their
        prompts share no start with the first warm-up's, which the prefix cache would skip."""
        ends: queue.SimpleQueue = queue.SimpleQueue()  # each request's ("done", None) or ("error", exception)
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0)
        emit = lambda event: ends.put(event) if event[0] != "text" else None  # noqa: E731
        with self.engine.wake:
            for prompt in ("Good morning to you", "Count to three"):
                self.engine.submit(self.request(self.encode(prompt), sampling, [], GenerationStats(), emit))
        for _ in range(2):
            kind, error = ends.get()
            if kind == "error":
                raise error

    def format_prompt(self, prompt: str, system_prompt: str | None, history: list[dict] = ()) -> str:
        """The model's input text; `history` holds earlier {role, content} turns (the `messages` input)."""
        if self.chat_template is None:
            turns = [m["content"] for m in history] + [prompt]
            return "\n\n".join(([system_prompt] if system_prompt else []) + turns)
        return self.chat_template.prompt(prompt, system_prompt, history)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str, chunk_chars: int = 16384) -> list[int]:
        """Token ids of a prompt, refusing one that cannot fit the context without tokenising all of
        it: first by its length in characters, then by counting tokens chunk by chunk (cut at
        spaces, where the pre-tokenizer cuts too) until the count is over the limit."""
        limit = self.context_length - 1
        if len(text) > limit * self.max_token_chars:
            raise self._too_long(f"at least {len(text) // self.max_token_chars}")
        if len(text) > chunk_chars:
            count, start = 0, 0
            while start < len(text):
                end = min(len(text), start + chunk_chars)
                if end < len(text):
                    cut = text.rfind(" ", start + 1, end)
                    end = cut if cut > start else end
                count += len(self.encode(text[start:end]))
                start = end
                if count > limit + start // chunk_chars:  # allow one extra token per cut
                    raise self._too_long(f"more than {limit}")
        ids = self.encode(text)
        if len(ids) > limit:
            raise self._too_long(str(len(ids)))
        return ids

    def _too_long(self, count: str) -> PromptTooLongError:
        return PromptTooLongError(
            f"prompt: {count} tokens does not fit the model's context of {self.context_length} "
            "tokens; shorten the prompt or system_prompt")

    def request(self, prompt_ids: list[int], sampling: Sampling, stop_sequences: list[str],
                stats: GenerationStats, emit):
        return Request(prompt_ids, sampling, stop_sequences, emit, stats)

    def generate(self, prompt_ids: list[int], sampling: Sampling, stop_sequences: list[str],
                 stats: GenerationStats, stop: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces as tokens are produced; `stats` is filled in as it goes. Closing the
        iterator early, or setting `stop` (from any thread), cancels the generation."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        req = self.request(prompt_ids, sampling, stop_sequences, stats, events.put)
        self.engine.submit(req)
        try:
            while True:
                if stop is not None and stop.is_set():
                    stats.stop_reason = "canceled"
                    return
                try:  # a short wait, so that an exception coglet raises in this thread (cancel) lands
                    kind, value = events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            req.cancelled = True
