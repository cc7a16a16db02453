"""Whisper's log-Mel features, computed a block of frames at a time.

faster-whisper's FeatureExtractor transforms a whole clip in one go: its Fourier transform, power
spectrum and Mel product each make an array the size of the clip (a 140 s clip: ~22 MB each; an hour:
~600 MB each). Memory that large comes fresh from the kernel on every call. On this project's VMs the
first touch of those pages took most of the time: 0.05-1.3 s per call for a 140 s clip, against
0.035-0.05 s here (`docs/llm-serving-measurements.md`, stop 31). Per block, the same steps
(same window, same transform, same filters, same clipping) give the same numbers; only the clip-wide
maximum that the floor is taken from needs the whole clip, and that is one pass over the small Mel
array. The same to the last bit where the BLAS rounds the Mel product alike whatever its width; on a
CPU where OpenBLAS takes another path for a narrower product (stop 34's AVX-512 machine: 2,048 columns
against a whole clip's 4,172), ~1 in 300 values differ by one unit in the last place (1.2e-7).
"""

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

# Frames per block: 2,048 frames of 400 samples are ~3 MB in and ~1.6 MB out, which stay in cache.
BLOCK_FRAMES = 2048


class BlockwiseFeatureExtractor(FeatureExtractor):
    """faster-whisper's FeatureExtractor with the same attributes and output (tests/test_audio_units.py
    compares both), its __call__ done in blocks of BLOCK_FRAMES frames."""

    def __call__(self, waveform: np.ndarray, padding=160, chunk_length=None):
        if chunk_length is not None:  # as faster-whisper's does: the window length follows the call
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        waveform = np.asarray(waveform, dtype=np.float32)
        if padding:
            waveform = np.pad(waveform, (0, padding))
        half = self.n_fft // 2  # centred frames: reflect half a frame at each end
        padded = np.pad(waveform, (half, half), mode="reflect")
        n_frames = 1 + (len(padded) - self.n_fft) // self.hop_length
        step = padded.strides[0]
        frames = np.lib.stride_tricks.as_strided(padded, (n_frames, self.n_fft), (self.hop_length * step, step),
                                                 writeable=False)
        window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)
        kept = n_frames - 1  # faster-whisper drops the last frame
        mel = np.empty((self.mel_filters.shape[0], kept), np.float32)
        for start in range(0, kept, BLOCK_FRAMES):
            stop = min(kept, start + BLOCK_FRAMES)
            power = np.abs(np.fft.rfft(frames[start:stop] * window, axis=-1).astype(np.complex64, copy=False)) ** 2
            mel[:, start:stop] = self.mel_filters @ power.T
        log_spec = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0
