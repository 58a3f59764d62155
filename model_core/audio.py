"""Speech loading: any file libsndfile reads, mixed to mono, resampled to 16 kHz float32, with specific errors.

Nothing in a file's header is trusted before it is checked: the sample rate must be within 4-384 kHz, the length
is bounded (MAX_FRAMES) before anything is allocated, a WAV whose header declares more data than the file holds is
refused as truncated, and the level must be that of audio (peak within MAX_PEAK of full scale).
"""
from __future__ import annotations

import os
import re
import stat
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from .protocol import ErrorKind
from .timing import SAMPLE_RATE

MIN_RATE, MAX_RATE = 4_000, 384_000
MAX_FRAMES = 1 << 28  # per channel, at the file's rate: 1 GiB as mono float32 (93 min at 48 kHz, 4.6 h at 16 kHz)
MAX_PEAK = 16.0  # float files may overshoot full scale a little; far beyond it the samples are not audio levels
BLOCK = 1 << 18


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file and the problem."""

    kind = ErrorKind.AUDIO


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE, chunk: int = 1 << 16) -> np.ndarray:
    """Polyphase resampling of mono float32 audio: scipy.signal.resample_poly's Kaiser-windowed (beta 5) FIR filter,
    summed in its order, so the samples are the same; importing scipy.signal would take a second of start-up."""
    if sr_in == sr_out:
        return audio
    ratio = Fraction(sr_out, sr_in).limit_denominator(10000)
    up, down = ratio.numerator, ratio.denominator
    half_len = 10 * max(up, down)  # the filter spans 10 zero crossings of the sinc on either side
    cutoff = 1.0 / max(up, down)  # of Nyquist; the expressions are firwin's, so the taps round as its do
    m = np.arange(2 * half_len + 1) - float(half_len)
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(len(m), 5.0)
    h = (h / h.sum()).astype(np.float32) * np.float32(up)  # unit gain at DC, times up for the inserted zeros
    pre = down - half_len % down  # leading zeros that centre the output samples on the filter
    h = np.concatenate([np.zeros(pre, np.float32), h, np.zeros(-(pre + len(h)) % up, np.float32)])
    per_phase = len(h) // up
    taps = h.reshape(per_phase, up).T  # taps[phase, k] = h[k * up + phase]
    skip = (half_len + pre) // down  # output samples that only the filter's delay produced
    n_out = -(-len(audio) * up // down)
    last = (skip + n_out - 1) * down // up  # the newest input sample any output reads
    x = np.zeros(per_phase - 1 + max(last + 1, len(audio)), np.float32)  # zeros before and after the audio
    x[per_phase - 1:per_phase - 1 + len(audio)] = audio
    out = np.empty(n_out, np.float32)
    for start in range(0, n_out, chunk):
        newest, phase = np.divmod(np.arange(start + skip, min(start + chunk, n_out) + skip) * down, up)
        acc = np.zeros(len(newest), np.float32)
        for k in range(per_phase - 1, -1, -1):  # oldest input sample first, as scipy's upfirdn adds them
            acc += x[newest + (per_phase - 1 - k)] * taps[phase, k]
        out[start:start + len(acc)] = acc
    return out


def _check_file(path: Path) -> None:
    """A regular, non-empty file that can be opened; FIFOs, devices and /proc files are named as such."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except OSError as e:
        shown = str(path) if len(str(path)) <= 300 else f"{str(path)[:150]}...{str(path)[-150:]}"
        raise AudioError(f"cannot open the audio file ({e.strerror}): {shown}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"audio path is a folder, not a file: {path}")
    if not stat.S_ISREG(st.st_mode):
        what = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise AudioError(f"audio path is {what}, not an audio file: {path}")
    if st.st_size == 0:
        try:
            with open(path, "rb") as f:
                has_data = bool(f.read(1))
        except OSError as e:
            raise AudioError(f"cannot read the audio file ({e.strerror}): {path}") from None
        if has_data:
            raise AudioError(f"audio path is a virtual file (it reports 0 bytes but has contents, like those in "
                             f"/proc): copy the audio to a regular file first: {path}")
        raise AudioError(f"audio file is empty (0 bytes): {path}")


def _check_header(info, path: Path) -> None:
    """Sample rate, length and (for WAV-like files) the declared data size against what the file holds."""
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise AudioError(f"audio header declares a sample rate of {info.samplerate} Hz, outside "
                         f"{MIN_RATE // 1000}-{MAX_RATE // 1000} kHz: the file is corrupt or not speech audio: {path}")
    if info.frames > MAX_FRAMES:
        raise AudioError(f"audio is too long: {info.frames / info.samplerate / 60:.0f} min at {info.samplerate} Hz; "
                         f"at most {MAX_FRAMES / info.samplerate / 60:.0f} min at this rate are read at once "
                         f"(split the file, or resample it to 16 kHz): {path}")
    # libsndfile reads what is there and logs "data : DECLARED (should be PRESENT)" when the header claims more.
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.MULTILINE)
    if m:
        declared, present = int(m[1]), int(m[2])
        streamed = declared in (0, 0xFFFFFFFF)  # writers that cannot seek leave the size open
        if not streamed and present < 0.99 * declared:
            seconds = info.frames / info.samplerate  # what is present
            said = f"{seconds * declared / present:.2f} s" if present else f"{declared} bytes"
            raise AudioError(f"audio file is truncated: its header declares {said} but only {seconds:.2f} s are "
                             f"present: {path}")


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a speech file as a mono float32 waveform at `sr` Hz; raise AudioError with a specific reason."""
    path = Path(path)
    _check_file(path)
    try:
        with sf.SoundFile(os.fsencode(path)) as f:  # bytes: names that are not UTF-8 open too
            _check_header(f, path)
            mono = np.empty(f.frames, np.float32)
            n = 0
            for block in f.blocks(BLOCK, dtype="float32", always_2d=True):
                k = min(len(block), len(mono) - n)
                # float32 throughout: long clips stay small; a silent channel does not cancel the others
                mono[n:n + k] = block[:k, 0] if block.shape[1] == 1 else block[:k].mean(axis=1, dtype=np.float64)
                n += k
            file_sr = f.samplerate
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(f"cannot read {path.name} as audio ({e.error_string.strip().rstrip('.') or 'no details'}): "
                         "the file is truncated, corrupt, or not in a format libsndfile reads "
                         "(WAV, FLAC, OGG, MP3 ...)") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot read {path.name} as audio: {e or type(e).__name__}") from None
    mono = mono[:n]
    if n == 0:
        raise AudioError(f"audio file has no samples: {path}")
    finite = np.isfinite(mono)
    if not finite.all():
        raise AudioError(f"audio file contains {int((~finite).sum())} non-finite samples (NaN or Inf): {path}")
    peak = float(np.abs(mono).max())
    if peak > MAX_PEAK:
        raise AudioError(f"audio level is out of range: samples reach {peak:.3g}, but audio lies within -1..1 "
                         f"(a float file with unscaled samples?); normalise it in an audio editor: {path}")
    return resample(mono, file_sr, sr).astype(np.float32, copy=False)
