"""Continuous batching: one thread runs the model for every request in flight.

Each step of the engine's loop
  1. drops the requests that were cancelled (from any thread) or have finished,
  2. admits waiting requests (when slots are free) and runs one chunk of a prompt (prefill): requests
     that wait together and whose prompts fit one chunk are prefilled together, in one forward; the
     start a prompt shares with a recent one is copied from the prefix cache, not computed again (and
     only what is left of a prompt counts against the chunk),
  3. runs one decode step for all the sequences that are generating: a [B, 1] forward over B cache
     slots, then each sequence picks its next token with its own sampling settings and generator.
     On CPU a float32 model runs steps 2 and 3 on onnxruntime once its graph is built
     (models/llm/ort_forward.py); on torch, a float model runs them as one forward
     (`_decode_and_prefill`), so that the weights are read once for both. A decode step of several
     rows may stay on torch (oneDNN's packed weights) where that measured faster: see `RowsTrial`.
So a request joins the running batch at the next step and leaves as soon as it is done; a long
prompt is prefilled in chunks between decode steps, and cancelling takes effect at the next step.

Running sequences keep the cache slots 0..B-1 (the ones being prefilled sit right after them), so a
decode step reads a contiguous view of the cache; when one leaves, the last moves into its slot.
"""

import atexit
import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from models.llm.prefix_cache import PrefixCache
from models.llm.text_generation import Generation, Request, pick_next_token

# Prompt tokens per prefill forward: bounds how long the other streams (and a cancel) wait.
PREFILL_CHUNK = 128


@dataclass
class RowsTrial:
    """Which forward runs a float32 decode step of several rows once onnxruntime's graph is built: the
    graph (MLAS's GEMM) or torch on oneDNN's packed weights (with prompts joining the step: one read
    of the weights for both). Which is faster depends on the machine, so the engine measures: its
    first steps of several rows alternate between the two at the same row count, and after `PAIRS`
    pairs (past a first one that warms oneDNN up for the shape: 1.28x the graph's time in one run)
    torch keeps them if its median time is under `KEEP_TORCH_BELOW` of the graph's; else the packed
    copies (as large as the weights) are freed. Measured side by side on SmolLM2 (one thread,
    in-process, bench prompts, 8 streams): on a Zen 4 core reading 40 GB/s, steps of 8 rows took 31.5
    ms on torch against 34.6 on the graph (the 121 products alone 22.3 against 29.5 ms), and through
    the server 8 streams made 13 % more tokens; on stop 32's machine (21 GB/s) the graph's products
    were the faster. One row is the graph's everywhere (16 against 31 ms here). COGKIT_LLM_ROWS=graph
    or =torch skips the measuring."""
    PAIRS = 7  # the first is not counted
    KEEP_TORCH_BELOW = 0.95
    choice: str | None = None  # "graph" or "torch" once decided
    ratios: list[float] = field(default_factory=list)  # torch's time over the graph's, pair by pair
    graph_step: tuple[int, float] | None = None  # (rows, seconds) of the pair's first half

    @classmethod
    def from_env(cls) -> "RowsTrial":
        choice = os.environ.get("COGKIT_LLM_ROWS") or None
        if choice not in (None, "graph", "torch"):
            raise ValueError(f"COGKIT_LLM_ROWS: must be graph or torch, got {choice!r}")
        return cls(choice=choice)

    def next_on_torch(self, rows: int) -> bool:
        """Whether the coming step of `rows` rows runs on torch (during the trial: the pair's second half)."""
        if self.choice is not None:
            return self.choice == "torch"
        return self.graph_step is not None and self.graph_step[0] == rows

    def record(self, rows: int, on_torch: bool, seconds: float) -> None:
        if self.choice is not None:
            return
        if not on_torch:
            self.graph_step = (rows, seconds)
            return
        self.ratios.append(seconds / self.graph_step[1])
        self.graph_step = None
        if len(self.ratios) == self.PAIRS:
            self.choice = "torch" if statistics.median(self.ratios[1:]) < self.KEEP_TORCH_BELOW else "graph"


@dataclass
class Sequence(Generation):
    generator: torch.Generator | None = None  # this request's sampling, seeded from its seed
    prefilled: int = 0  # prompt tokens already in the cache
    cached: int = 0  # tokens in the cache (prompt and fed-back output)
    last_token: int = -1  # the token to feed at the next decode step (-1: still prefilling)


class BatchEngine:
    def __init__(self, model, tokenizer, eos_ids: set[int], context_length: int, max_batch: int = 1,
                 reuse_prefixes: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.context_length = context_length
        self.max_batch = max(1, max_batch)
        self.device = model.device
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # index == cache slot; decoding first, prefilling last
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run, and the batch sizes they had (for tests and metrics)
        self.batch_sizes: list[int] = []
        self.prefill_sizes: list[int] = []  # sequences per prefill forward
        # Whether the model reads its float packed weight copies (calls of several rows); None: it has
        # none (an engine of one sequence, int8, a GPU), or they were freed.
        self.packed = False if model.has_packed_weights() else None
        self.rows = RowsTrial.from_env() if self.packed is not None else RowsTrial(choice="graph")
        self.frees_packed = True  # torch's packed copies (float or int8) go once the graph runs every forward
        # On CPU a float model runs a decode step and a prompt chunk in one forward (`_decode_and_prefill`):
        # a 14-token chunk beside 7 decoding rows took 104 ms against 145 ms one after the other, with
        # the same logits. Not on GPU (its decode step is a compiled graph; unmeasured there) nor for
        # int8 models (rows that must each come out as they do alone, which the step alone ensures).
        self.mixes = model.device.type == "cpu" and not model.rows_independent
        self.stopping = False
        # Not for int8 models: a prompt prefilled in two pieces rounds differently from one piece, and
        # their rows must come out bit for bit as they do alone.
        self.prefixes = PrefixCache() if reuse_prefixes and not model.rows_independent else None
        # A thread building the model's onnxruntime graph that every forward waits for (an int8 model's:
        # see TextGenerator.forward_on_onnxruntime); None once joined, or when nothing waits.
        self.graph_pending: threading.Thread | None = None

    # ------------------------------------------------------------------ public, any thread
    def submit(self, request: Request) -> None:
        """Queue a request; raises PromptTooLongError/ValueError at once for a prompt that cannot run."""
        seq = Sequence.start(request, self.tokenizer, self.context_length,
                             generator=torch.Generator().manual_seed(request.sampling.seed))
        with self.wake:
            self.waiting.append(seq)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
                self.thread.start()
                atexit.register(self.stop)
            self.wake.notify()

    def stop(self) -> None:
        """End the engine thread once nothing is in flight (at exit: a thread still parked inside
        torch when the interpreter tears down could abort the process with "terminate called
        without an active exception"; seen in 5 of 8 exits after a finished generation)."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.waiting and not self.running and not self.stopping:
                        self.wake.wait()
                    if self.stopping and not self.waiting and not self.running:
                        return
                try:
                    self.step()
                except Exception as e:  # a bug or out-of-memory: fail what is in flight, keep serving
                    for seq in self.running:
                        seq.finish(("error", e))
                    self.running = []

    def step(self) -> None:
        if self.graph_pending is not None:
            self.graph_pending.join()
            self.graph_pending = None
        if self.frees_packed and self.model.ort_forward is not None and self.rows.choice == "graph":
            # The graph runs every forward from now on: torch's packed weight copy (as large as the
            # weights) is read no more. Freed here, on the thread that ran torch's forwards.
            self.model.drop_packed_weights()
            self.packed, self.frees_packed = None, False
        self._drop_finished()
        self._admit()
        first = len(self.running)  # the sequences being prefilled sit after the decoding ones
        while first > 0 and self.running[first - 1].last_token < 0:
            first -= 1
        if 0 < first < len(self.running) and self.mixes and self._rows_on_torch():
            self._use_packed(True)
            self._decode_and_prefill(self.running[:first], self.running[first:])
            return
        if first < len(self.running) and self.model.ort_forward is not None and all(
                self._chunk_len(seq) == 1 for seq in self.running[first:]):
            # Prompts with one token left (the prefix cache held the rest) are decode rows: they join
            # this step's graph call instead of making calls of their own.
            self._decode_with_last_prompt_tokens(self.running[:first], self.running[first:])
            return
        if first < len(self.running):
            prefilling = self.running[first:]
            self._use_packed(len(prefilling) > 1 or self._chunk_len(prefilling[0]) > 1)
            self._prefill_chunk(prefilling, first_slot=first)
            self._drop_finished()  # one that ended on its first token frees its slot before the decode
        # The generating sequences are a prefix of `running` (slots 0..B-1); a prefill that just
        # produced its first token joins them in this very step.
        decoding = [s for s in self.running if s.last_token >= 0 and not s.finished]
        assert decoding == self.running[: len(decoding)]
        if decoding:
            self._use_packed(len(decoding) > 1)
            self._decode(decoding)

    def _rows_on_torch(self) -> bool:
        """Whether steps of several rows (and prompts beside them) run on torch: before the graph is
        built, or where torch measured faster (`RowsTrial`)."""
        return self.model.ort_forward is None or self.rows.choice == "torch"

    def _use_packed(self, on: bool) -> None:
        """Whether the next forward reads the packed weight copies (on CPU, where `cpu_layouts` made
        them): faster for any call of several rows, a batch's decode step or a prompt's chunk; a lone
        sequence's decode step reads the column-major copy. (onnxruntime's graph holds its own copy.)"""
        if self.packed is not None and on != self.packed:
            self.model.use_packed_weights(on)
            self.packed = on

    @staticmethod
    def _chunk_len(seq: Sequence) -> int:
        return min(PREFILL_CHUNK, len(seq.request.prompt_ids) - seq.prefilled)

    def _next_chunks(self, seqs: list[Sequence]) -> list[list[int]]:
        return [seq.request.prompt_ids[seq.prefilled: seq.prefilled + self._chunk_len(seq)] for seq in seqs]

    def _drop_finished(self) -> None:
        with self.wake:
            for seq in [s for s in self.waiting if s.request.cancelled]:
                self.waiting.remove(seq)
                seq.request.stats.stop_reason = "canceled"
        keep = []
        for slot, seq in enumerate(self.running):
            if seq.request.cancelled and not seq.finished:
                seq.request.stats.stop_reason = "canceled"
                seq.finished = True
            if seq.finished:
                self._keep_prefix(seq, slot)  # before another sequence moves into its slot
                continue
            if slot != len(keep):  # compact: only ever moves a sequence to a lower slot
                self.model.move_slot(slot, len(keep), seq.cached)
            keep.append(seq)
        self.running = keep

    def _admit(self) -> None:
        if self.running and self.running[-1].last_token < 0:
            return  # one prefill at a time
        free = self.max_batch - len(self.running)
        if free <= 0:
            return
        with self.wake:
            if not self.waiting:
                return
            group = [self.waiting.popleft()]
            # Requests that waited together and whose prompts (what the prefix cache leaves of them)
            # fit one chunk share one prefill forward, their rows padded to the longest (an int8
            # model's rows attend each over its own tokens: see Attention.forward).
            if self._fits_one_chunk(group[0]):
                while self.waiting and len(group) < free and self._fits_one_chunk(self.waiting[0]):
                    group.append(self.waiting.popleft())
        need = max(len(seq.request.prompt_ids) + seq.max_new for seq in group)
        self.model.setup_cache(need, slots=len(self.running) + len(group))
        for slot, seq in enumerate(group, start=len(self.running)):
            self._reuse_prefix(seq, slot)
        self.running.extend(group)

    def _reuse_prefix(self, seq: Sequence, slot: int) -> None:
        """Copy the longest start this prompt shares with a recent one into its slot."""
        if self.prefixes is None:
            return
        length, kv = self.prefixes.longest(seq.request.prompt_ids)
        if length:
            self.model.write_prefix(slot, kv, length)
            seq.prefilled = seq.cached = length
            seq.request.stats.cached_tokens = length

    def _keep_prefix(self, seq: Sequence, slot: int) -> None:
        """Store the tokens this slot holds keys and values for: the prompt once it is prefilled, the
        prompt and the fed-back output once the request is done (the next turn of a chat starts with
        both)."""
        if self.prefixes is None or seq.cached == 0:
            return
        tokens = (seq.request.prompt_ids + seq.request.stats.token_ids)[: seq.cached]
        if not self.prefixes.covers(tokens):
            self.prefixes.store(tokens, self.model.read_prefix(slot, len(tokens)))

    def _fits_one_chunk(self, seq: Sequence) -> bool:
        prompt = seq.request.prompt_ids
        reused = self.prefixes.longest(prompt, peek=True)[0] if self.prefixes is not None else 0
        return len(prompt) - reused <= PREFILL_CHUNK

    def _prompt_chunks(self, seqs: list[Sequence]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor, int]:
        """The next chunk of each prompt, and the forward's input ids, positions and key count. Shorter
        chunks are padded at the end with their last token: the padding's keys lie past the prompt,
        where no real query looks, and the sequence's own tokens overwrite them before it attends
        that far."""
        chunks = self._next_chunks(seqs)
        width = max(len(chunk) for chunk in chunks)
        ids = torch.tensor([chunk + chunk[-1:] * (width - len(chunk)) for chunk in chunks], device=self.device)
        # A row that starts later (a reused prefix) may pad past the cache's end: its padding then
        # writes to the last position, which lies past every prompt too.
        end = self.model.cache_len - 1
        positions = torch.tensor([[min(seq.prefilled + j, end) for j in range(width)] for seq in seqs],
                                 device=self.device)
        return chunks, ids, positions, min(max(seq.prefilled for seq in seqs) + width, end + 1)

    def _prefill_chunk(self, seqs: list[Sequence], first_slot: int) -> None:
        """The next chunk of each prompt, in one forward (on onnxruntime's graph: one call each)."""
        if self.model.ort_forward is not None:
            chunks = self._next_chunks(seqs)
            logits = torch.cat([self.model.ort_forward(torch.tensor([chunk]), [seq.prefilled + len(chunk)], slot)
                                for slot, (seq, chunk) in enumerate(zip(seqs, chunks), start=first_slot)])
            self._prefilled(seqs, chunks, logits, first_slot)
            return
        chunks, ids, positions, kv_len = self._prompt_chunks(seqs)
        end = self.model.cache_len - 1
        # a tensor, not a list: a compiled forward guards a list's length, and compiled again for
        # each number of prompts prefilled together
        last = torch.tensor([len(chunk) - 1 for chunk in chunks], device=self.device) if len(seqs) > 1 else None
        logits = self.model(ids, positions, first_slot=first_slot, kv_len=kv_len, last=last,
                            row_kv_lens=[min(seq.prefilled + len(chunk), end + 1) for seq, chunk in zip(seqs, chunks)])
        self._prefilled(seqs, chunks, logits, first_slot)

    def _prefilled(self, seqs: list[Sequence], chunks: list[list[int]], logits: torch.Tensor, first_slot: int) -> None:
        self.prefill_sizes.append(len(seqs))
        for slot, (seq, chunk, row) in enumerate(zip(seqs, chunks, logits, strict=True), start=first_slot):
            seq.prefilled += len(chunk)
            seq.cached += len(chunk)
            if seq.prefilled == len(seq.request.prompt_ids):
                self._keep_prefix(seq, slot)
                self._take_token(seq, row)

    def _decode(self, seqs: list[Sequence]) -> None:
        ids, positions, kv_len = self._decode_inputs(seqs)
        rows = len(seqs)
        on_torch = self.model.ort_forward is None or (rows > 1 and self.rows.next_on_torch(rows))
        started = time.perf_counter()
        if on_torch:
            logits = self.model(ids, positions, first_slot=0, kv_len=kv_len)
        else:  # onnxruntime's graph of the step, on the same cache
            logits = self.model.ort_forward(ids, [s.cached + 1 for s in seqs])
        if rows > 1 and self.model.ort_forward is not None:
            self.rows.record(rows, on_torch, time.perf_counter() - started)
        self._decoded(seqs, logits)

    def _decode_with_last_prompt_tokens(self, decoding: list[Sequence], prefilling: list[Sequence]) -> None:
        """One graph call over slots 0..B-1: each decoding row's last token and each prompt's last one."""
        last = [[seq.request.prompt_ids[seq.prefilled]] for seq in prefilling]
        ids = torch.tensor([[s.last_token] for s in decoding] + last)
        logits = self.model.ort_forward(ids, [s.cached + 1 for s in decoding + prefilling])
        if decoding:
            self._decoded(decoding, logits[: len(decoding)])
        self._prefilled(prefilling, last, logits[len(decoding):], first_slot=len(decoding))

    def _decode_and_prefill(self, decoding: list[Sequence], prefilling: list[Sequence]) -> None:
        """A decode step and the next prompt chunk in one forward (see Llama.forward_mixed): the
        running sequences' next tokens cost little more than the chunk alone."""
        ids, positions, kv_len = self._decode_inputs(decoding)
        chunks, prompt_ids, prompt_positions, prompt_kv_len = self._prompt_chunks(prefilling)
        logits = self.model.forward_mixed(ids, positions, kv_len, prompt_ids, prompt_positions, prompt_kv_len,
                                          last=[len(chunk) - 1 for chunk in chunks])
        self._decoded(decoding, logits[: len(decoding)])
        self._prefilled(prefilling, chunks, logits[len(decoding):], first_slot=len(decoding))

    def _decode_inputs(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids = torch.tensor([[s.last_token] for s in seqs], device=self.device)
        positions = torch.tensor([[s.cached] for s in seqs], device=self.device)
        return ids, positions, max(s.cached for s in seqs) + 1

    def _decoded(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        for s in seqs:
            s.cached += 1
        self.steps += 1
        self.batch_sizes.append(len(seqs))
        greedy = logits.argmax(-1).tolist() if any(s.request.sampling.temperature == 0 for s in seqs) else None
        for i, seq in enumerate(seqs):
            if seq.request.cancelled:
                continue
            token = greedy[i] if greedy and seq.request.sampling.temperature == 0 else None
            self._take_token(seq, logits[i], token)

    def _take_token(self, seq: Sequence, logits: torch.Tensor, token: int | None = None) -> None:
        if token is None:
            token = pick_next_token(logits, seq.request.sampling, seq.generator)
        if seq.take(token, self.eos_ids):
            seq.last_token = token
