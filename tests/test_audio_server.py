"""Whisper and TTS through the real coglet server with the real default weights, plus transformers
VITS with a tiny random model. The round trip: the TTS server speaks, the Whisper server listens."""

import re

import numpy as np
import pytest
import requests

from cogkit.server import ServerError
from models import get_model
from tests.fixtures_audio import FOX, data_uri, decode_data_uri, encode_sound, read_sound


def transcribe(server, audio: bytes, **inputs):
    return server.predict({"audio": data_uri(audio), **inputs})


def succeeded(result):
    assert result["status"] == "succeeded", result.get("error")
    return result["output"]


SRT_BLOCK = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Strict SRT: numbered blocks from 1, HH:MM:SS,mmm times, a text line, blank lines between."""
    blocks = text.strip("\n").split("\n\n")
    cues = []
    for i, block in enumerate(blocks, start=1):
        m = SRT_BLOCK.fullmatch(block + "\n")
        assert m, f"not an SRT block: {block!r}"
        assert int(m[1]) == i
        g = [int(x) for x in m.groups()[1:9]]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m[10]))
    return cues


def test_asr_is_an_alias_of_whisper():
    assert get_model("asr") is get_model("whisper")


def test_round_trip_tts_then_whisper(fox_speech, whisper_server):
    samples, rate = read_sound(fox_speech)
    duration = len(samples) / rate
    assert rate == 22050 and 1.5 < duration < 6
    out = succeeded(result := transcribe(whisper_server, fox_speech))
    assert "quick brown fox" in out["transcription"].lower()
    assert out["detected_language"] == "en"
    assert out["segments"]
    for seg in out["segments"]:
        assert 0 <= seg["start"] < seg["end"] <= duration + 0.01
    cues = parse_srt(decode_data_uri(out["srt_file"]).decode())
    assert [c[2] for c in cues] == [s["text"] for s in out["segments"]]
    assert all(0 <= a < b <= duration + 0.01 for a, b, _ in cues)
    vtt = decode_data_uri(out["vtt_file"]).decode()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert decode_data_uri(out["txt_file"]).decode().strip() == out["transcription"]
    m = result["metrics"]
    assert abs(m["audio_duration"] - duration) < 0.01
    assert 0 < m["real_time_factor"] < 5


def test_word_timestamps_are_ordered_inside_the_clip(fox_speech, whisper_server):
    out = succeeded(transcribe(whisper_server, fox_speech, timestamps="word"))
    words = [w for s in out["segments"] for w in s["words"]]
    assert [w["word"].strip(".").lower() for w in words][1:4] == ["quick", "brown", "fox"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and starts[-1] < len(read_sound(fox_speech)[0]) / 22050
    assert all(w["start"] <= w["end"] for w in words)


def test_no_timestamps_gives_one_segment(fox_speech, whisper_server):
    out = succeeded(transcribe(whisper_server, fox_speech, timestamps="none"))
    assert len(out["segments"]) == 1 and "quick brown fox" in out["segments"][0]["text"].lower()


def test_stereo_44k_mp3_input(fox_speech, whisper_server):
    from scipy.signal import resample_poly

    mono, _ = read_sound(fox_speech)
    up = resample_poly(mono[:, 0], 2, 1)  # 22.05 kHz -> 44.1 kHz
    stereo = np.stack([up, 0.6 * up], axis=1)
    for fmt in ("FLAC", "MP3"):
        out = succeeded(transcribe(whisper_server, encode_sound(stereo, 44100, fmt)))
        assert "quick brown fox" in out["transcription"].lower(), fmt


def test_clip_longer_than_30s_is_transcribed_in_windows(tts_server, fox_speech, whisper_server):
    swans = decode_data_uri(succeeded(tts_server.predict({"text": "Seven silver swans swim south.",
                                                          "variation": 0.0})))
    gap = np.zeros((int(0.4 * 22050), 1), np.float32)
    fox, swan = read_sound(fox_speech)[0], read_sound(swans)[0]
    samples = np.concatenate([fox, gap, fox, gap, swan, gap] * 5)
    duration = len(samples) / 22050
    assert duration > 30
    result = transcribe(whisper_server, encode_sound(samples, 22050, "FLAC"))
    out = succeeded(result)
    assert out["transcription"].lower().count("fox") >= 8
    assert out["transcription"].lower().count("silver") >= 4
    assert ". The quick" in out["transcription"]  # segments are joined with spaces
    assert out["segments"][-1]["end"] > 30
    assert all(0 <= s["start"] <= s["end"] <= duration + 0.01 for s in out["segments"])
    assert abs(result["metrics"]["audio_duration"] - duration) < 0.01


def test_batched_long_form_with_the_voice_activity_filter(tts_server, fox_speech, whisper_server):
    """Long audio with silences: the VAD drops the silence, the speech is cut at pauses and decoded
    four chunks at a time; times stay on the original clock."""
    gap = np.zeros((int(3.0 * 22050), 1), np.float32)
    fox = read_sound(fox_speech)[0]
    samples = np.concatenate([gap, fox, gap] * 8)
    duration = len(samples) / 22050
    assert duration > 60
    out = succeeded(transcribe(whisper_server, encode_sound(samples, 22050, "FLAC"),
                               vad_filter=True, batch_size=4))
    assert out["transcription"].lower().count("fox") >= 7
    starts = [s["start"] for s in out["segments"]]
    assert starts == sorted(starts) and starts[0] >= 2.5 and out["segments"][-1]["end"] > duration - 10
    assert all(0 <= s["start"] <= s["end"] <= duration + 0.01 for s in out["segments"])


def test_vad_filter_and_beam_search_alone(fox_speech, whisper_server):
    out = succeeded(transcribe(whisper_server, fox_speech, vad_filter=True, beam_size=5))
    assert "quick brown fox" in out["transcription"].lower()


def test_batching_without_the_voice_activity_filter_is_refused(fox_speech, whisper_server):
    result = transcribe(whisper_server, fox_speech, batch_size=4)
    assert result["status"] == "failed" and "batch_size: batched transcription cuts the audio" in result["error"]


def test_temperature_sampling_runs(fox_speech, whisper_server):
    out = succeeded(transcribe(whisper_server, fox_speech, temperature=0.2))
    assert "fox" in out["transcription"].lower()


def tone(seconds, rate=16000):
    return (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize("audio, message", [
    (b"", "audio: the file is empty"),
    (b"just some text, not audio\n" * 10, "audio: not a readable audio file"),
    (b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 64, "audio: MP4/M4A (AAC) files are not supported"),
    (encode_sound(np.zeros(32000, np.float32), 16000), "audio: the audio is silent"),
    (encode_sound(tone(2.0), 16000)[:30000], "audio: the WAV file is truncated"),
    (encode_sound(tone(2.0), 16000, "FLAC")[:4000], "audio: the FLAC file is truncated"),
])
def test_bad_audio_fails_with_a_message_naming_audio(whisper_server, audio, message):
    result = transcribe(whisper_server, audio)
    assert result["status"] == "failed"
    assert message in result["error"], result["error"]


@pytest.mark.parametrize("inputs, message", [
    ({"language": "de"}, "language: this Whisper model is English-only"),
    ({"language": "klingon"}, "language: 'klingon' is not a Whisper language"),
    ({"task": "translate"}, "task: translate needs a multilingual Whisper model"),
])
def test_options_the_model_cannot_do_are_refused(whisper_server, fox_speech, inputs, message):
    result = transcribe(whisper_server, fox_speech, **inputs)
    assert result["status"] == "failed" and message in result["error"], result.get("error")


def test_whisper_input_rules_are_422(whisper_server):
    with pytest.raises(ServerError, match="timestamps"):
        whisper_server.predict({"audio": data_uri(b"x"), "timestamps": "char"})
    with pytest.raises(ServerError, match="temperature"):
        whisper_server.predict({"audio": data_uri(b"x"), "temperature": 3})
    with pytest.raises(ServerError, match="beam_size"):
        whisper_server.predict({"audio": data_uri(b"x"), "beam_size": 0})
    with pytest.raises(ServerError, match="batch_size"):
        whisper_server.predict({"audio": data_uri(b"x"), "batch_size": 65})
    with pytest.raises(ServerError, match="audio: Field required"):
        whisper_server.predict({})


@pytest.mark.parametrize("fmt, container", [("wav", "WAV"), ("mp3", "MP3"), ("flac", "FLAC")])
def test_tts_every_output_format(tts_server, fmt, container):
    import soundfile as sf
    import io

    result = tts_server.predict({"text": "Hello from cogkit.", "output_format": fmt})
    data = decode_data_uri(succeeded(result))
    info = sf.info(io.BytesIO(data))
    assert info.format == container and info.samplerate == 22050 and info.channels == 1
    assert 0.5 < info.duration < 4
    assert abs(result["metrics"]["audio_duration"] - info.duration) < 0.1
    assert result["metrics"]["real_time_factor"] > 0


def test_tts_speed_and_determinism(tts_server):
    def say(**kw):
        return decode_data_uri(succeeded(tts_server.predict({"text": FOX, "variation": 0.0, **kw})))

    normal, again, fast = say(), say(), say(speed=2.0)
    assert normal == again  # variation 0: the same audio every time
    assert len(read_sound(fast)[0]) < 0.7 * len(read_sound(normal)[0])


def test_tts_long_text_is_spoken_sentence_by_sentence(tts_server):
    result = tts_server.predict({"text": "First one. Second one! Third one?", "variation": 0.0})
    succeeded(result)
    assert result["metrics"]["sentence_count"] == 3


@pytest.mark.parametrize("inputs, message", [
    ({"text": "   "}, "text: is empty"),
    ({"text": "... ?!"}, "text: has no letters or digits"),
    ({"text": FOX, "speaker": "alice"}, "speaker: this voice has a single speaker"),
])
def test_tts_bad_text_fails_naming_the_input(tts_server, inputs, message):
    result = tts_server.predict(inputs)
    assert result["status"] == "failed" and message in result["error"], result.get("error")


@pytest.mark.parametrize("inputs, field", [
    ({"text": ""}, "text"), ({"text": "a" * 5001}, "text"), ({"text": "hi", "speed": 10}, "speed"),
    ({"text": "hi", "output_format": "ogg"}, "output_format"),
])
def test_tts_input_rules_are_422(tts_server, inputs, field):
    resp = requests.post(f"{tts_server.url}/predictions", json={"input": inputs})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_vits_engine_every_output_format(tiny_vits_server, fmt):
    result = tiny_vits_server.predict({"text": "hello world. again.", "output_format": fmt, "variation": 0.0})
    samples, rate = read_sound(decode_data_uri(succeeded(result)))
    assert rate == 16000 and len(samples) > 0 and np.abs(samples).max() > 0.1
    assert result["metrics"]["sentence_count"] == 2


def test_vits_engine_is_deterministic_without_variation(tiny_vits_server):
    def say():
        return succeeded(tiny_vits_server.predict({"text": "hello world", "variation": 0.0}))

    assert say() == say()
