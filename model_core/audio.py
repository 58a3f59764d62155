"""Speech loading: any file libsndfile reads, mixed to mono, resampled to 16 kHz float32, with specific errors."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}  # what a folder of speech is searched for


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file and the problem."""


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase (Kaiser-windowed FIR) resampling along axis 0."""
    if sr_in == sr_out:
        return audio
    ratio = Fraction(sr_out, sr_in).limit_denominator(10000)
    return resample_poly(audio, ratio.numerator, ratio.denominator, axis=0)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a speech file as a mono float32 waveform at `sr` Hz; raise AudioError with a specific reason."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"audio path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(f"cannot read {path.name} as audio ({e.error_string.strip().rstrip('.')}): "
                         "the file is truncated, corrupt, or not in a format libsndfile reads "
                         "(WAV, FLAC, OGG, MP3 ...)") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot read {path.name} as audio: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {path}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio file contains {bad} non-finite samples (NaN or Inf): {path}")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)  # float32 throughout: long clips stay small
    return resample(mono, file_sr, sr).astype(np.float32, copy=False)
