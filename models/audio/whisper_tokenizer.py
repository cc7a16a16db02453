"""Whisper's tokenizer as a snapshot boot needs it: no parsing of tokenizer.json.

`tokenizers` takes ~100 ms to parse Whisper's tokenizer.json, and holds the GIL while it does. Most of
that goes into building its 50k-entry vocabulary and merges, and it was the largest single step of a
snapshot boot. What faster-whisper asks of the tokenizer during a transcription is much smaller:
  - the ids of special tokens (`token_to_id`),
  - text for ids (`decode`, byte-level: each token stands for a few bytes),
  - and the ids of a fixed list of symbols it keeps the model from writing (`encode`).
So the snapshot records exactly that:
  - each id's bytes, in one file;
  - the added tokens, and which of them are special;
  - the answers to the lookups and encodings faster-whisper's Tokenizer makes, for every task and
    language.
A boot from the snapshot answers from these records. It parses tokenizer.json only when asked
something they do not hold, which today's inputs never do (tests/test_whisper_tokenizer.py). The
records are written once, with the real tokenizer at hand, and checked against it before they are
kept.
"""

import json
import random
import threading
from array import array
from pathlib import Path

TOKEN_BYTES_FILE = "tokenizer-bytes.bin"  # uint32 count, count+1 uint32 offsets, then the bytes
TOKENIZER_RECORD_FILE = "tokenizer-record.json"


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, as a map from character to byte. A token is a string of these
    characters, one per byte. Printable bytes stand for themselves; the others are shifted past 255
    in order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + shifted)] = byte
            shifted += 1
    return alphabet


def token_bytes(token: str, alphabet: dict[str, int]) -> bytes:
    """The bytes a token stands for, as tokenizers' ByteLevel decoder reads it: the alphabet's byte
    for each character, or the token's own UTF-8 when a character lies outside the alphabet."""
    try:
        return bytes(alphabet[c] for c in token)
    except KeyError:
        return token.encode()


class RecordingTokenizer:
    """The real tokenizer, noting the answers to every lookup and encoding made through it."""

    def __init__(self, real):
        self.real = real
        self.lookups: dict[str, int | None] = {}
        self.encodings: dict[str, list[int]] = {}

    def token_to_id(self, token: str):
        self.lookups[token] = self.real.token_to_id(token)
        return self.lookups[token]

    def encode(self, text: str, add_special_tokens: bool = True):
        encoding = self.real.encode(text, add_special_tokens=add_special_tokens)
        if not add_special_tokens:  # faster-whisper's only kind
            self.encodings[text] = list(encoding.ids)
        return encoding


def ask_what_transcriptions_ask(tokenizer, multilingual: bool) -> None:
    """Every lookup and encoding faster-whisper's Tokenizer makes, for each task and language."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES, _TASKS, Tokenizer

    settings = [(task, language) for task in _TASKS for language in _LANGUAGE_CODES] if multilingual else [(None, None)]
    for task, language in settings:
        fw = Tokenizer(tokenizer, multilingual, task=task, language=language)
        for name in ("transcribe", "translate", "sot", "sot_lm", "sot_prev", "eot", "no_timestamps",
                     "no_speech", "non_speech_tokens", "sot_sequence"):
            getattr(fw, name)


def write_tokenizer_record(real, multilingual: bool, into: Path, checks: int = 2000, seed: int = 0) -> bool:
    """Record what SnapshotTokenizer needs, from the real tokenizer, into a snapshot folder. First,
    decode every id alone and `checks` random runs of ids both ways. If any run decodes differently,
    or recording fails (say, a faster-whisper whose Tokenizer asks other things), the record says only
    that, and boots from this snapshot parse tokenizer.json as before. The rest of the snapshot is
    kept. Returns whether the records were written."""
    try:
        reason = recorded(real, multilingual, into, checks, seed)
    except Exception as e:  # noqa: BLE001 - declined, and the boot goes on
        reason = f"recording failed: {type(e).__name__}: {e}"
    if reason is not None:
        (into / TOKENIZER_RECORD_FILE).write_text(json.dumps({"declined": reason}), encoding="utf-8")
    return reason is None


def recorded(real, multilingual: bool, into: Path, checks: int, seed: int) -> str | None:
    """write_tokenizer_record's work: None once the records are written, else why they were not."""
    alphabet = byte_level_alphabet()
    count = real.get_vocab_size(with_added_tokens=True)
    pieces = [token_bytes(real.id_to_token(i) or "", alphabet) for i in range(count)]
    added = real.get_added_tokens_decoder()
    recorder = RecordingTokenizer(real)
    ask_what_transcriptions_ask(recorder, multilingual)
    record = {"added": {token.content: i for i, token in added.items()},
              "special_ids": sorted(i for i, token in added.items() if token.special),
              "lookups": recorder.lookups, "encodings": recorder.encodings}
    offsets = array("I", [0])
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece))
    blob = array("I", [count]).tobytes() + offsets.tobytes() + b"".join(pieces)

    ours = SnapshotTokenizer(record, blob, source=None)
    rng = random.Random(seed)
    # Runs from the first 512 ids, half of them, mix tokens of single bytes: they split characters, so
    # these runs check how invalid UTF-8 is replaced. `count + 8` includes ids beyond the vocabulary.
    runs = [[i] for i in range(count)] + [
        [rng.randrange(512 if k % 2 else count + 8) for _ in range(rng.randint(1, 12))] for k in range(checks)]
    if any(ours.decode(ids) != real.decode(ids) for ids in runs):
        return "decoding differed from tokenizers'"
    (into / TOKEN_BYTES_FILE).write_bytes(blob)
    (into / TOKENIZER_RECORD_FILE).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return None


class SnapshotTokenizer:
    """What faster-whisper calls on a tokenizers.Tokenizer, answered from a snapshot's records.
    Anything the records do not hold goes to the real tokenizer, parsed from `source` on first need."""

    def __init__(self, record: dict, blob: bytes, source: Path | None):
        (count,) = array("I", blob[:4])
        self.offsets = array("I", blob[4: 4 * (count + 2)])
        self.data = memoryview(blob)[4 * (count + 2):]
        self.count = count
        self.lookups = {**record["added"], **record["lookups"]}
        self.special = frozenset(record["special_ids"])
        self.encodings = record["encodings"]
        self.source = source
        self.real = None  # the parsed tokenizer.json, once something needed it
        self.lock = threading.Lock()

    @classmethod
    def from_snapshot(cls, restored: Path, source: Path) -> "SnapshotTokenizer | None":
        """The restored snapshot's tokenizer records; None when it has none (a snapshot from before
        them: no TOKENIZER_RECORD_FILE) or they were declined (write_tokenizer_record)."""
        try:
            record = json.loads((restored / TOKENIZER_RECORD_FILE).read_text(encoding="utf-8"))
            return cls(record, (restored / TOKEN_BYTES_FILE).read_bytes(), source)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def full(self):
        with self.lock:
            if self.real is None:
                import tokenizers

                self.real = tokenizers.Tokenizer.from_file(str(self.source))
            return self.real

    def token_to_id(self, token: str) -> int | None:
        if token in self.lookups:
            return self.lookups[token]
        return self.full().token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True):
        ids = self.encodings.get(text) if not add_special_tokens else None
        if ids is None:
            return self.full().encode(text, add_special_tokens=add_special_tokens)
        return Encoded(ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """As tokenizers decodes byte-level ids: unknown ids dropped, special ones too unless asked
        to keep them, then every token's bytes read as one UTF-8 string (invalid bytes replaced)."""
        data, offsets, count = self.data, self.offsets, self.count
        kept = (i for i in ids if 0 <= i < count and not (skip_special_tokens and i in self.special))
        return b"".join(data[offsets[i]: offsets[i + 1]] for i in kept).decode("utf-8", errors="replace")


class Encoded:
    """The part of a tokenizers.Encoding that faster-whisper reads."""

    def __init__(self, ids: list[int]):
        self.ids = list(ids)
