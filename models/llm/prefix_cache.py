"""Keys and values of recent prompts, so that a prompt that starts like one of them (the same system
prompt and chat template, an earlier turn of the same conversation) skips computing that start again.

Chat prompts share a lot: SmolLM2's template puts 24 tokens of system prompt and role markers in
front of every user message of the benchmark's 36-token prompts, and a conversation's next turn
starts with the whole of the last one. The engine stores each prompt's keys and values once its
prefill is done, and again with the request's output when it ends; a new request copies the longest
start it shares with a stored entry into its cache slot and prefills only the rest (at least its
last token, whose logits give the first new token). The keys and values of a position depend only
on the tokens up to it, so this is the same computation (to float rounding), done once. Not used for
int8 models, whose rows must come out bit for bit as they do alone.

Entries are whole prompts (and, once a request is done, its prompt with the output it fed back: the
start of the conversation's next turn), least recently used first out, within a byte budget.
"""

from collections import OrderedDict

import torch

# 64 MiB holds ~1,400 tokens of SmolLM2-135M's float32 keys and values (46 KiB per token).
DEFAULT_BUDGET_BYTES = 64 << 20


def shared_start(a: tuple[int, ...], b: list[int]) -> int:
    """How many leading tokens two prompts have in common."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def nbytes(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget = budget_bytes
        self.entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.used = 0
        self.hits = 0  # requests that reused a stored start, and the prompt tokens they skipped
        self.reused_tokens = 0

    def longest(self, prompt: list[int], peek: bool = False
                ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest start of `prompt` that a stored entry holds, leaving at least the prompt's last
        token to compute: (length, that entry's per-layer (keys, values)); (0, None) when none.
        `peek`: only look (the entry stays where it is in the eviction order, no hit is counted)."""
        best, kv, best_key = 0, None, None
        for key, entry in self.entries.items():
            n = min(shared_start(key, prompt), len(prompt) - 1)
            if n > best:
                best, kv, best_key = n, entry, key
        if best_key is not None and not peek:
            self.entries.move_to_end(best_key)
            self.hits += 1
            self.reused_tokens += best
        return best, kv

    def store(self, prompt: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the keys and values of these tokens ([kv_heads, len(prompt), head_dim] per layer)."""
        key = tuple(prompt)
        size = nbytes(kv)
        if key in self.entries or size > self.budget:
            return
        # an entry that is a start of this one adds nothing once this one is kept (a prompt, then
        # that prompt with its answer)
        for old in [k for k in self.entries if len(k) <= len(key) and shared_start(k, prompt) == len(k)]:
            self.used -= nbytes(self.entries.pop(old))
        while self.used + size > self.budget:
            _, old = self.entries.popitem(last=False)
            self.used -= nbytes(old)
        self.entries[key] = kv
        self.used += size

    def covers(self, prompt: list[int]) -> bool:
        """Whether storing `prompt` would add nothing: an entry already holds all of it."""
        return any(len(key) >= len(prompt) and shared_start(key, prompt) == len(prompt) for key in self.entries)
