"""Constants every part of avmdvae shares, defined here once (with the arithmetic that derives them).

The model's clocks and sizes (Sadok et al. 2024): video at 30 frames/s, audio at 16 kHz, a 64 ms
analysis window with one power spectrum per video frame, 64x64 RGB face crops.
"""

from __future__ import annotations

from collections.abc import Callable

MODEL_FPS = 30.0  # the model's video clock (frames per second)
SAMPLE_RATE = 16_000  # the model's audio clock (Hz): 16_000 / 30 = 533.33 samples per video frame
WINDOW_SECONDS = 0.064  # STFT analysis window
N_FFT = round(WINDOW_SECONDS * SAMPLE_RATE)  # 1024 samples
N_BINS = N_FFT // 2 + 1  # 513 one-sided frequency bins (0 .. 8 kHz, 15.625 Hz apart)
FACE_SIZE = 64  # face crops are FACE_SIZE x FACE_SIZE RGB

MODALITIES = ("audio", "visual")
MDVAE_LATENTS = ("w", "zav", "za", "zv")  # static w, shared z(av), audio-only z(a), visual-only z(v)

Progress = Callable[[str, int, int], None]  # the library's progress callback: (step name, done, total)


def no_progress(name: str, done: int, total: int) -> None:
    """The default Progress: report nothing."""
