"""Whisper on transformers, as cogkit ran it before CTranslate2 (and as a typical predict.py does):
the naive boot of `cogkit bench boot whisper` (variant (a)) and today's baseline in
`models/audio/whisper_bench.py`. The predictor itself runs `models/audio/whisper_runtime.py`.

Conversion: a CTranslate2 Whisper folder is mapped onto `WhisperForConditionalGeneration` (the fused
attention weights split apart) and written as a transformers checkpoint; a transformers folder is
re-saved in the runtime dtype. Decoding: transformers' own long-form generate (sequential 30 s
windows that move on at the last predicted timestamp), word times from cross-attention alignment.
"""

import json
import re
from pathlib import Path

import numpy as np

from models.audio.whisper import read_ct2_model
from models.audio.whisper_runtime import SAMPLE_RATE, Transcript, TranscriptionInputError, checked_language

TIME_PRECISION = 0.02  # seconds per timestamp token
WINDOW_FRAMES = 3000  # 30 s of log-mel frames


def runtime_dtype() -> str:
    """fp16 on GPU; fp32 on CPU, where half-precision matmuls are slow."""
    import torch

    return "float16" if torch.cuda.is_available() else "float32"


def layer_count(v: dict, stack: str) -> int:
    found = {m.group(1) for k in v if (m := re.match(rf"{stack}/layer_(\d+)/", k))}
    return 1 + max(int(i) for i in found)


def ct2_to_hf_state(v: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Map CTranslate2 WhisperSpec variables onto WhisperForConditionalGeneration's names."""
    state = {}

    def put(hf: str, ct2: str):
        state[hf + ".weight"] = v[ct2 + "/weight"]
        if ct2 + "/bias" in v:
            state[hf + ".bias"] = v[ct2 + "/bias"]

    def norm(hf: str, ct2: str):
        state[hf + ".weight"], state[hf + ".bias"] = v[ct2 + "/gamma"], v[ct2 + "/beta"]

    def fused(hf_prefix: str, ct2: str, names: list[str]):
        # CTranslate2 fuses q/k/v (or k/v) into one linear; Whisper's k projection has no bias.
        weights = np.split(v[ct2 + "/weight"], len(names))
        biases = np.split(v[ct2 + "/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            state[f"{hf_prefix}.{name}.weight"] = w
            if name != "k_proj":
                state[f"{hf_prefix}.{name}.bias"] = b

    def self_attention_and_ffn(dst: str, src: str) -> None:  # what encoder and decoder layers share
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        put(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        put(f"{dst}.fc1", f"{src}/ffn/linear_0")
        put(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    enc_layers, dec_layers = layer_count(v, "encoder"), layer_count(v, "decoder")
    put("model.encoder.conv1", "encoder/conv1")
    put("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(enc_layers):
        self_attention_and_ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    state["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        self_attention_and_ffn(dst, src)
        put(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
        put(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    shape = {
        "d_model": v["decoder/embeddings/weight"].shape[1],
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "encoder_layers": enc_layers, "decoder_layers": dec_layers,
        "encoder_attention_heads": int(v["encoder/num_heads"]), "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    return state, shape


def whisper_tokenizer(tokenizer_json: Path):
    """A transformers WhisperTokenizer from a tokenizers JSON file, with the timestamp tokens added
    (as ordinary tokens after the specials: Whisper takes timestamp ids to start after the last special)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    raw = json.loads(Path(tokenizer_json).read_text())
    vocab = raw["model"]["vocab"]
    # transformers 5's Whisper tokenizer wants merges as pairs, not "a b" strings.
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw["model"]["merges"]]
    specials = [t["content"] for t in sorted(raw["added_tokens"], key=lambda t: t["id"])
                if t["special"] and t["content"] != "<|endoftext|>"]
    tok = WhisperTokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials)
    if "<|0.00|>" not in tok.get_vocab():
        tok.add_tokens([AddedToken(f"<|{i * TIME_PRECISION:.2f}|>", lstrip=False, rstrip=False,
                                   normalized=False, special=False) for i in range(1501)])
    return tok


def generation_config(tok, vocab_size: int, alignment_heads, suppress: list[int], begin_suppress: list[int]):
    # Built fresh: editing a loaded Whisper GenerationConfig in place leaves stale forced ids behind.
    from transformers import GenerationConfig

    ids = tok.get_vocab()
    multilingual = vocab_size >= 51865
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    gen = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        max_length=448, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, is_multilingual=multilingual, alignment_heads=alignment_heads,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in ids}
        gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return gen


def convert_to_transformers(source: Path, out: Path, dtype: str) -> dict:
    source = Path(source)
    if (source / "model.bin").is_file():
        return convert_ct2(source, out, dtype)
    if (source / "config.json").is_file():
        return convert_hf(source, out, dtype)
    raise ValueError(f"source: {source} is neither a CTranslate2 Whisper folder (model.bin) nor a "
                     "transformers Whisper folder (config.json)")


def convert_ct2(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    spec, variables = read_ct2_model(source / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"source: {source}/model.bin holds a CTranslate2 {spec}, not a WhisperSpec")
    state, shape = ct2_to_hf_state(variables)
    extra = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    tok = whisper_tokenizer(source / "tokenizer.json")
    if len(tok) != shape["vocab_size"]:
        raise ValueError(f"source: tokenizer has {len(tok)} tokens but the model's vocabulary is {shape['vocab_size']}")
    ids = tok.get_vocab()
    suppress = extra.get("suppress_ids", [])
    begin_suppress = extra.get("suppress_ids_begin", [220, ids["<|endoftext|>"]])
    config = WhisperConfig(
        **shape, decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        dtype=dtype,
    )
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(a)).to(torch_dtype).contiguous() for k, a in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    alignment = extra.get("alignment_heads")
    generation_config(tok, shape["vocab_size"], alignment, suppress, begin_suppress).save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=shape["num_mel_bins"]).save_pretrained(out)
    return {"dtype": dtype, "architecture": "whisper", "format": "ctranslate2",
            "parameters": sum(t.numel() for t in tensors.values()),
            "multilingual": shape["vocab_size"] >= 51865}


def convert_hf(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    raw = json.loads((source / "config.json").read_text())
    if raw.get("model_type") != "whisper":
        raise ValueError(f"source: {source} holds a {raw.get('model_type')!r} model, not whisper")
    model = WhisperForConditionalGeneration.from_pretrained(source, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(source).save_pretrained(out)
    return {"dtype": dtype, "architecture": "whisper", "format": "transformers",
            "parameters": sum(p.numel() for p in model.parameters()),
            "multilingual": bool(model.generation_config.is_multilingual)}


class TransformersTranscriber:
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
        return checked_language(language, task, self.multilingual)

    def detect_language(self, features) -> str:
        if not self.multilingual:
            return "en"
        lang_ids = self.model.detect_language(input_features=features[:, :, :WINDOW_FRAMES])
        token = self.tokenizer.convert_ids_to_tokens(int(lang_ids[0]))
        return token.strip("<|>")

    def transcribe(self, samples: np.ndarray, language: str | None = None, task: str = "transcribe",
                   timestamps: str = "segment", temperature: float = 0.0, beam_size: int = 1,
                   vad_filter: bool = False, batch_size: int = 1) -> Transcript:
        import torch

        if (beam_size, vad_filter, batch_size) != (1, False, 1):
            raise TranscriptionInputError("beam_size, vad_filter, batch_size: the transformers baseline runs "
                                          "greedy, unfiltered, sequential decoding only")
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
