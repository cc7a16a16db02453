"""Every LLM family against transformers: a tiny random checkpoint of each, laid out like the hub's,
built by `cogkit build-weights` (from the folder and from `hf:` through a hub cache), then run by
the predictor's generator. Logits must be within tolerance and greedy tokens identical."""

import json

import pytest
import torch

from cogkit.build import build_weights
from cogkit.sources import SourceError
from models.llm.llama import load_llama
from models.llm.families import UnsupportedModelError, inv_frequencies, rope_parameters
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator
from tests.tiny_llms import FAMILIES, make_hub_cache, make_tiny_checkpoint

IDS = [5, 17, 42, 99, 3, 250, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 30, 31, 32, 33, 34, 35, 36, 37]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, monkeypatch_module):
    """(name, source folder, built weights folder, transformers reference model)."""
    from transformers import AutoModelForCausalLM

    name = request.param
    root = tmp_path_factory.mktemp(f"family-{name}")
    source = make_tiny_checkpoint(name, root / "source")
    cache = make_hub_cache(source, root / "hub-cache", f"tiny/{name}")
    monkeypatch_module.setenv("HF_HUB_CACHE", str(cache))
    from_hub = build_weights("llm", source=f"hf:tiny/{name}", dtype="float32", dest=root / "hub", log=lambda *a: None)
    from_folder = build_weights("llm", source=str(source), dtype="float32", dest=root / "folder",
                                log=lambda *a: None)
    assert from_hub["files"] == from_folder["files"]  # the same conversion either way
    assert from_hub["source"] == f"hf:tiny/{name}" and from_hub["architecture"] == FAMILIES[name][0]
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    return name, source, root / "hub", reference


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_logits_match_transformers(family):
    name, _, built, reference = family
    ours = load_llama(built)
    ids = torch.tensor([IDS[:ours.cfg.max_position_embeddings]])  # longer than the sliding windows
    ours.setup_cache(ids.shape[1])
    with torch.no_grad():
        want = reference(ids).logits
        got = ours(ids, torch.arange(ids.shape[1])[None], all_logits=True)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_greedy_tokens_match_transformers_generate(family):
    name, _, built, reference = family
    generator = TextGenerator(built)
    prompt = generator.encode(generator.format_prompt("Hello there, how are you today?", None))
    if len(prompt) + 8 > generator.context_length:  # llama-dynamic's 16 tokens: no chat template
        prompt = generator.encode("Hello there")
    stats = GenerationStats()
    max_new = min(16, generator.context_length - len(prompt))
    list(generator.generate(prompt, Sampling(max_new_tokens=max_new, temperature=0), [], stats))
    out = reference.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=list(generator.eos_ids), pad_token_id=0)
    want = out[0, len(prompt):].tolist()
    assert stats.token_ids == [t for t in want if t not in generator.eos_ids][:len(stats.token_ids)]
    assert len(stats.token_ids) >= min(4, len(want))


def test_a_decode_step_over_rounded_key_counts_attends_as_the_exact_one(family):
    """A decode step whose rows must not depend on each other (int8 builds) attends over a key count
    rounded up to a multiple of ROW_KEYS_MULTIPLE, the keys past each row (and before its sliding
    window) masked. It must attend as the step over exactly the filled keys does, past the windows
    too."""
    name, _, built, _ = family
    model = load_llama(built)
    n = min(len(IDS), model.cfg.max_position_embeddings) - 1
    lengths = [n - 1, n - 4]  # two rows of different lengths, both longer than the windows (6)
    model.setup_cache(n + 1, slots=2)
    with torch.no_grad():
        for slot, length in enumerate(lengths):
            model(torch.tensor([IDS[:length]]), torch.arange(length)[None], first_slot=slot)
        step = dict(input_ids=torch.tensor([[IDS[n]], [IDS[n - 3]]]), positions=torch.tensor([[m] for m in lengths]),
                    kv_len=max(lengths) + 1)
        masked = model(**step)
        model.rows_independent = True
        rounded = model(**step)
    torch.testing.assert_close(rounded, masked, atol=1e-5, rtol=1e-5)


def test_rope_scaling_is_applied_as_transformers_does(family):
    """The frequencies themselves, and that a scaled family's really differ from plain rope."""
    name, _, built, reference = family
    cfg = load_llama(built).cfg
    ours, scale = inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
    rotary = reference.model.rotary_emb
    torch.testing.assert_close(ours, rotary.inv_freq.float(), atol=0, rtol=1e-6)
    assert scale == pytest.approx(rotary.attention_scaling)
    plain, _ = inv_frequencies({"rope_type": "default", "rope_theta": cfg.rope["rope_theta"]}, cfg.head_dim,
                               cfg.max_position_embeddings)
    scaled = cfg.rope["rope_type"] in ("llama3", "linear", "yarn")
    assert (not torch.equal(ours, plain)) == scaled
    if cfg.rope["rope_type"] == "dynamic":  # past the context, the base grows with the sequence
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        longer = cfg.max_position_embeddings * 3
        want, _ = ROPE_INIT_FUNCTIONS["dynamic"](reference.config, None, seq_len=torch.tensor(longer))
        got, _ = inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, torch.tensor(longer))
        torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
        assert not torch.equal(got, plain)


def test_chat_template_matches_transformers(family):
    name, source, built, _ = family
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    generator = TextGenerator(built)
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Où est Paris ?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    if "raise_exception('Only user" in (tokenizer.chat_template or ""):
        # The template takes no system message: the system prompt goes in front of the user's.
        text = generator.format_prompt("Où est Paris ?", "Answer in French.")
        assert text == tokenizer.apply_chat_template(
            [{"role": "user", "content": "Answer in French.\n\nOù est Paris ?"}], tokenize=False,
            add_generation_prompt=True)
        history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        assert generator.format_prompt("Où est Paris ?", "Answer in French.", history) == \
            tokenizer.apply_chat_template([{"role": "user", "content": "Answer in French.\n\nHi"}, history[1],
                                           {"role": "user", "content": "Où est Paris ?"}], tokenize=False,
                                          add_generation_prompt=True)
        return
    assert generator.format_prompt("Où est Paris ?", "Answer in French.") == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    with_tools = generator.chat_template.render(messages, tools=tools)
    assert with_tools == tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                       add_generation_prompt=True)
    if "tools" in tokenizer.chat_template:
        assert "Météo d'une ville" in with_tools and "get_weather" in with_tools


def test_unsupported_model_type_is_refused_naming_it(tmp_path):
    source = make_tiny_checkpoint("llama", tmp_path / "src")
    raw = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**raw, "model_type": "gemma2",
                                                    "architectures": ["Gemma2ForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gemma2'.*supported: llama, mistral, qwen2, qwen3"):
        build_weights("llm", source=str(source), dtype="float32", dest=tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_unsupported_rope_type_and_mismatched_tensors_are_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="rope_type 'longrope'"):
        rope_parameters({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "longrope", "factor": 2.0}})
    source = make_tiny_checkpoint("qwen2", tmp_path / "src")
    raw = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))  # attention_bias is false
    with pytest.raises(ValueError, match=r"does not match its llama config.json: .*unexpected tensor"):
        build_weights("llm", source=str(source), dtype="float32", dest=tmp_path / "out", log=lambda *a: None)


def test_missing_hub_repo_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SourceError, match="hf:tiny/absent: not in the local Hugging Face cache"):
        build_weights("llm", source="hf:tiny/absent", dest=tmp_path / "out", log=lambda *a: None)


def test_generation_config_adds_end_of_turn_tokens(tmp_path):
    """Llama 3 instruct checkpoints end a chat turn with <|eot_id|>, listed only in generation_config.json."""
    source = make_tiny_checkpoint("llama3", tmp_path / "src")
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    build_weights("llm", source=str(source), dtype="float32", dest=tmp_path / "out", log=lambda *a: None)
    config = load_llama(tmp_path / "out").cfg
    assert config.eos_token_id[0] == json.loads((source / "config.json").read_text())["eos_token_id"]
    assert config.eos_token_id[1:] == [t for t in (2, 7) if t != config.eos_token_id[0]]


# What the ctranslate2 build refuses, by family (models/llm/ct2_build.py says why).
CT2_REFUSES = {"llama-dynamic": "rope scaling 'dynamic'", "llama-yarn": "rope scaling 'yarn'",
               "llama3": "rope scaling 'llama3'", "mistral": "sliding-window attention",
               "qwen2-sliding": "sliding-window attention"}


def test_ctranslate2_build_scores_tokens_as_transformers_does(family, tmp_path):
    """`--engine ctranslate2`: the same checkpoint in CTranslate2's decoder gives transformers'
    next-token log-probabilities (biases, untied heads, q/k norms, head_dim, linear rope scaling),
    and greedy tokens equal to the torch engine's; or the build refuses the family, naming why."""
    name, source, built, reference = family
    dest = tmp_path / "llm"
    if name in CT2_REFUSES:
        with pytest.raises(ValueError, match=f"engine: .*{CT2_REFUSES[name]}.*--engine torch"):
            build_weights("llm", source=str(source), dtype="float32", dest=dest, engine="ctranslate2",
                          log=lambda *a: None)
        assert not dest.exists()
        return
    build_weights("llm", source=str(source), dtype="float32", dest=dest, engine="ctranslate2", log=lambda *a: None)
    ct2 = TextGenerator(dest)
    ids = IDS[:reference.config.max_position_embeddings]
    got = ct2.engine.generator.score_batch([[ct2.engine.vocab[i] for i in ids]])[0].log_probs
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0, :-1]
    want = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(got), want, atol=2e-3, rtol=1e-3)
    torch_gen = TextGenerator(built)
    for prompt in ([5, 17, 42, 99, 3, 250, 7, 8, 9, 10, 11, 12], [30, 31, 32]):
        tokens = []
        for gen in (torch_gen, ct2):
            stats = GenerationStats()
            list(gen.generate(prompt, Sampling(max_new_tokens=10, temperature=0), [], stats))
            tokens.append(stats.token_ids)
        assert tokens[0] == tokens[1]
