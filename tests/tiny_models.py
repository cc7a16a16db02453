"""Tiny random-weight source checkpoints, made offline and deterministically, for fast tests.

They are written as real Hugging Face folders (transformers' own `save_pretrained`), so building
them runs the same conversion code as a user's `--source` folder.
"""

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Cog packages machine learning models into containers that boot fast.",
    "Hello there! How are you today? I am a small language model, trained for tests.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ' \" ( ) [ ] - _ / \\",
]


def make_tokenizer(folder: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE}))
    return tok


def make_tiny_llama_source(folder: Path, seed: int = 0, context: int = 2048) -> Path:
    """A 4-layer Llama with grouped-query attention and tied embeddings, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<|im_start|>"), eos_token_id=tok.token_to_id("<|im_end|>"))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init, so that sampling is far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    return folder


def make_tiny_whisper(folder: Path, english_tokenizer_json: Path) -> Path:
    """A random-weight multilingual Whisper (2 layers of width 64, Whisper's real 51865-token
    vocabulary) saved by transformers, like a hub repo. The multilingual tokenizer is the English one
    with the base vocabulary one token longer, which is how the two vocabularies differ."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from models.audio.whisper_transformers import generation_config, whisper_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.loads(Path(english_tokenizer_json).read_text())
    vocab = raw["model"]["vocab"]
    vocab["<|endoftext|>"] = 50257
    # The multilingual base vocabulary has one more entry, an empty token (CTranslate2 tells the two
    # kinds apart by it); no merge produces it, it only moves the special tokens up by one.
    vocab[""] = 50256
    for t in raw["added_tokens"]:
        t["id"] += 1
    shifted = folder / "multilingual-tokenizer.json"
    shifted.write_text(json.dumps(raw))
    tok = whisper_tokenizer(shifted)
    shifted.unlink()
    ids = tok.get_vocab()
    assert len(tok) == 51865 and ids["<|endoftext|>"] == 50257 and ids["<|notimestamps|>"] == 50363
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51865, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    )
    WhisperForConditionalGeneration(config).eval().save_pretrained(folder)
    generation_config(tok, 51865, [[1, 0], [1, 1]], [], [220, ids["<|endoftext|>"]]).save_pretrained(folder)
    tok.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def in_hub_cache(cache: Path, repo: str, folder: Path, revision: str = "0" * 40) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repo (models--ORG--NAME/
    snapshots/REV/ and refs/main), so that `hf:ORG/NAME` resolves offline."""
    import shutil

    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / revision)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
