"""Running Whisper on decoded audio: transformers' own long-form decoding (sequential 30 s windows
that move on at the last timestamp the model predicted), segment times from timestamp tokens and
word times from cross-attention alignment (the model's `alignment_heads`)."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW_FRAMES = 3000  # 30 s of log-mel frames


class TranscriptionInputError(ValueError):
    pass


@dataclass
class Transcript:
    text: str
    language: str
    segments: list[dict] = field(default_factory=list)


def language_code(name: str | None) -> str | None:
    """'en', 'english' or 'English' -> 'en'; None or 'auto' -> None."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if name is None or name.strip().lower() in ("", "auto"):
        return None
    key = name.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise TranscriptionInputError(f"language: {name!r} is not a Whisper language; use a code such as "
                                  "'en', 'de', 'fr' or a name such as 'german', or 'auto'")


class Transcriber:
    def __init__(self, folder: Path, device: str):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
        from transformers.utils import logging

        logging.set_verbosity_error()  # transformers warns about its own internal generate arguments
        self.device = device
        # Eager attention: word timestamps read the cross-attention weights.
        self.model = WhisperForConditionalGeneration.from_pretrained(
            folder, attn_implementation="eager", dtype="auto").to(device).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.tokenizer = self.processor.tokenizer
        self.multilingual = bool(self.model.generation_config.is_multilingual)
        self.timestamp_begin = self.model.generation_config.no_timestamps_token_id + 1
        torch.set_grad_enabled(False)

    def features(self, samples: np.ndarray):
        fe = self.processor.feature_extractor
        if len(samples) > WINDOW_FRAMES * fe.hop_length:
            # Long form: keep all the audio (no truncation); generate() walks through it.
            f = fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                   padding="longest", return_attention_mask=True)
        else:
            f = fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        return f.input_features.to(self.device, self.dtype), f.attention_mask.to(self.device)

    def check_options(self, language: str | None, task: str):
        code = language_code(language)
        if not self.multilingual:
            if code not in (None, "en"):
                raise TranscriptionInputError(f"language: this Whisper model is English-only; {language!r} "
                                              "needs a multilingual model (e.g. hf:openai/whisper-small)")
            if task != "transcribe":
                raise TranscriptionInputError("task: translate needs a multilingual Whisper model; this one "
                                              "is English-only")
        return code

    def detect_language(self, features) -> str:
        if not self.multilingual:
            return "en"
        lang_ids = self.model.detect_language(input_features=features[:, :, :WINDOW_FRAMES])
        token = self.tokenizer.convert_ids_to_tokens(int(lang_ids[0]))
        return token.strip("<|>")

    def transcribe(self, samples: np.ndarray, language: str | None = None, task: str = "transcribe",
                   timestamps: str = "segment", temperature: float = 0.0) -> Transcript:
        import torch

        code = self.check_options(language, task)
        features, attention_mask = self.features(samples)
        detected = code or self.detect_language(features)
        kwargs = {"return_timestamps": True, "return_dict_in_generate": True,
                  "return_token_timestamps": timestamps == "word"}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        if self.multilingual:
            kwargs.update(language=detected, task=task)
        with torch.inference_mode():
            out = self.model.generate(features, attention_mask=attention_mask, **kwargs)
        duration = len(samples) / SAMPLE_RATE
        segments = [self.segment(i, s, duration, timestamps == "word") for i, s in enumerate(out["segments"][0])]
        segments = [s for s in segments if s["text"]]
        text = " ".join(s["text"] for s in segments).strip()
        if timestamps == "none":
            segments = [{"id": 0, "start": 0.0, "end": round(duration, 2), "text": text}] if text else []
        return Transcript(text=text, language=detected, segments=segments)

    def segment(self, index: int, seg: dict, duration: float, words: bool) -> dict:
        tokens = [int(t) for t in seg["tokens"]]
        text_tokens = [t for t in tokens if t < self.timestamp_begin and t not in self.tokenizer.all_special_ids]
        start, end = float(seg["start"]), min(float(seg["end"]), duration)
        out = {"id": index, "start": round(start, 2), "end": round(max(end, start), 2),
               "text": self.tokenizer.decode(text_tokens, skip_special_tokens=True).strip(),
               "tokens": text_tokens}
        if words and "token_timestamps" in seg:
            out["words"] = self.words(tokens, [float(t) for t in seg["token_timestamps"]], duration)
        return out

    def words(self, tokens: list[int], times: list[float], duration: float) -> list[dict]:
        """Join BPE pieces into words (a piece starting with a space starts a word). `times[i]` is when
        piece i ends, so a word runs from the end of the piece before it to the end of its last piece."""
        groups: list[list[int]] = []
        for i, t in enumerate(tokens):
            if t >= self.timestamp_begin or t in self.tokenizer.all_special_ids:
                continue
            piece = self.tokenizer.decode([t])
            if not groups or piece.startswith(" ") or not groups[-1]:
                groups.append([i])
            else:
                groups[-1].append(i)
        result = []
        for g in groups:
            word = self.tokenizer.decode([tokens[i] for i in g]).strip()
            if not word:
                continue
            start, end = times[max(g[0] - 1, 0)], times[g[-1]]
            result.append({"word": word, "start": round(min(start, duration), 2),
                           "end": round(min(max(end, start), duration), 2)})
        return result
