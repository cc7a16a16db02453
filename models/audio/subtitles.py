"""SubRip (.srt) and WebVTT (.vtt) text from timed segments."""


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments):
    # Players drop cues whose end is not after their start; give each at least 10 ms.
    for seg in segments:
        text = seg["text"].strip()
        if text:
            yield seg["start"], max(seg["end"], seg["start"] + 0.01), text.replace("-->", "->")


def to_srt(segments) -> str:
    blocks = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{t}\n"
              for i, (a, b, t) in enumerate(_cues(segments), start=1)]
    return "\n".join(blocks)


def to_vtt(segments) -> str:
    blocks = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{t}\n" for a, b, t in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)
