"""The LLM engine on CTranslate2 (weights built with `--engine ctranslate2`): batching at request
boundaries.

CTranslate2 decodes a batch in one `generate_batch` call and lets a row leave early (the step
callback returns True), but it cannot take a new row into a running batch. So the engine thread
  1. waits for requests, then gives the ones that arrive together a moment (GATHER_SECONDS) to
     arrive, so that concurrent clients share a batch;
  2. takes up to `max_batch` waiting requests that can share CTranslate2's sampling settings (one
     temperature / top-k / top-p per call: greedy ones together, sampled ones with equal settings);
  3. runs them in one call; each row streams its tokens through the callback, stops on its own end
     token, stop sequence, max_new_tokens or cancel, and leaves the batch.
Requests that arrive meanwhile wait for the call to end (the torch engine admits them at the next
step instead; README "LLM serving" measures what each costs).

Sampling: CTranslate2 draws from one random generator per worker thread, seeded when the thread
starts, so a seed cannot reproduce a sampled text here: the predictor refuses an explicit `seed`
with temperature > 0 on this engine (ct2_seed_error) rather than ignore it.
"""

import atexit
import json
import os
import threading
import time
from collections import deque
from pathlib import Path

from cogkit.ct2_cpu import import_ctranslate2
from models.llm.ct2_build import CT2_FOLDER
from models.llm.text_generation import Generation, Request, Sampling

# How long a batch waits for more requests once one is there: until none arrived for GATHER_SECONDS
# (concurrent clients' requests reach the engine up to ~10 ms apart through coglet), or for
# GATHER_EXPECTED_SECONDS while fewer are waiting than the last batch had (their clients are likely
# sending the next ones now), at most GATHER_MAX_SECONDS. A lone request pays GATHER_SECONDS of time
# to first token.
GATHER_SECONDS = 0.01
GATHER_EXPECTED_SECONDS = 0.03
GATHER_MAX_SECONDS = 0.1


def ct2_seed_error(sampling: Sampling, seed_given: bool) -> str | None:
    if seed_given and sampling.temperature > 0:
        return ("seed: this model runs on CTranslate2, which cannot reproduce sampling from a seed; "
                "leave seed empty, set temperature to 0 (greedy), or build the weights with --engine torch")
    return None


def compute_type(stored: str, device: str) -> str:
    """CTranslate2 runs what the build stored on CPU; a GPU runs float16 (int8 weights: int8_float16)."""
    if device == "cpu":
        return stored
    return "int8_float16" if stored == "int8" else "float16"


def cuda_available() -> bool:
    return import_ctranslate2().get_cuda_device_count() > 0


class CT2Engine:
    def __init__(self, folder: Path, tokenizer, eos_ids: set[int], context_length: int, max_batch: int = 1,
                 device: str = "cpu", dtype: str = "float32"):
        ctranslate2 = import_ctranslate2()
        threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: CTranslate2 picks (one per core)
        self.generator = ctranslate2.Generator(str(Path(folder) / CT2_FOLDER), device=device,
                                               compute_type=compute_type(dtype, device), intra_threads=threads)
        self.vocab = json.loads((Path(folder) / CT2_FOLDER / "vocabulary.json").read_text())
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.context_length = context_length
        self.max_batch = max(1, max_batch)
        self.waiting: deque[Generation] = deque()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # rows of each generate_batch call (tests, metrics)
        self.last_batch_size = 1
        atexit.register(self.release_callbacks)

    def release_callbacks(self) -> None:
        """CTranslate2's worker thread keeps its last job, with our Python callback, until the next job.
        Dropping that callback needs the GIL; at interpreter teardown it would abort the process
        ("terminate called without an active exception"). A last job without a callback, run while
        the interpreter is whole, lets the worker drop it in time."""
        self.generator.generate_batch([[self.vocab[0]]], max_length=1)

    # ------------------------------------------------------------------ public, any thread
    def submit(self, request: Request) -> None:
        """Queue a request; raises PromptTooLongError/ValueError at once for a prompt that cannot run."""
        row = Generation.start(request, self.tokenizer, self.context_length)
        with self.wake:
            self.waiting.append(row)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="llm-ct2-engine", daemon=True)
                self.thread.start()
            self.wake.notify()

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while True:
            rows = self._next_batch()
            try:
                self._run(rows)
            except Exception as e:  # a bug or out-of-memory: fail this batch, keep serving
                for row in rows:
                    if not row.finished:
                        row.finish(("error", e))

    def _next_batch(self) -> list[Generation]:
        with self.wake:
            while not self.waiting:
                self.wake.wait()
            started = time.perf_counter()
            while len(self.waiting) < self.max_batch:
                seen = len(self.waiting)
                left = GATHER_MAX_SECONDS - (time.perf_counter() - started)
                if left <= 0:
                    break
                quiet = GATHER_EXPECTED_SECONDS if seen < self.last_batch_size else GATHER_SECONDS
                self.wake.wait(min(quiet, left))
                if len(self.waiting) == seen:
                    break
            rows: list[Generation] = []
            key = None
            for row in list(self.waiting):
                if row.request.cancelled:
                    self.waiting.remove(row)
                    row.request.stats.stop_reason = "canceled"
                    continue
                if key is None:
                    key = sampling_key(row.request.sampling)
                if sampling_key(row.request.sampling) == key and len(rows) < self.max_batch:
                    self.waiting.remove(row)
                    rows.append(row)
            return rows

    def _run(self, rows: list[Generation]) -> None:
        if not rows:
            return
        s = rows[0].request.sampling
        self.batch_sizes.append(len(rows))
        self.last_batch_size = len(rows)

        def on_token(step) -> bool:  # CTranslate2's worker thread, once per generated token and row
            row = rows[step.batch_id]
            if not row.finished:
                if row.request.cancelled:
                    row.request.stats.stop_reason = "canceled"
                    row.finished = True
                else:
                    row.take(step.token_id, self.eos_ids)
            return row.finished  # True: CTranslate2 drops the row from the batch

        self.generator.generate_batch(
            [[self.vocab[i] for i in row.request.prompt_ids] for row in rows],
            max_length=max(row.max_new for row in rows), include_prompt_in_result=False,
            end_token=sorted(self.eos_ids), return_end_token=True,  # the callback sees it and stops
            sampling_topk=1 if s.temperature == 0 else (s.top_k or 0),
            sampling_topp=s.top_p, sampling_temperature=s.temperature or 1.0,
            callback=on_token)
        for row in rows:  # CTranslate2 reached max_length for the rows still going
            if not row.finished:
                row.request.stats.stop_reason = "length"
                row.finish()


def sampling_key(s: Sampling) -> tuple:
    """Requests with equal keys can share one generate_batch call (one set of sampling settings)."""
    return ("greedy",) if s.temperature == 0 else ("sample", s.temperature, s.top_p, s.top_k)
