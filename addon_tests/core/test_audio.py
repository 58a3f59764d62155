"""Audio loading: formats, channel mixing, resampling and specific errors, on real files."""
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_core.audio import AudioError, load_audio, resample

ROOT = Path(__file__).resolve().parents[2]


def tone(sr, seconds=1.0, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("subtype,ext,fmt", [("PCM_U8", "wav", "WAV"), ("PCM_16", "wav", "WAV"),
                                             ("PCM_24", "wav", "WAV"), ("PCM_32", "wav", "WAV"),
                                             ("FLOAT", "wav", "WAV"), ("PCM_16", "flac", "FLAC"),
                                             ("VORBIS", "ogg", "OGG")])
def test_formats(tmp_path, subtype, ext, fmt):
    path = tmp_path / f"a.{ext}"
    sf.write(path, tone(16000), 16000, subtype=subtype, format=fmt)
    y = load_audio(path)
    assert y.dtype == np.float32 and abs(len(y) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 2, "the tone survives decoding"


@pytest.mark.parametrize("sr", [8000, 44100, 96000])
def test_resampling_keeps_duration_and_pitch(tmp_path, sr):
    sf.write(tmp_path / "a.wav", tone(sr, 2.0, 300.0), sr)
    y = load_audio(tmp_path / "a.wav")
    assert abs(len(y) - 32000) <= 2
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) / 2.0 - 300) <= 1


@pytest.mark.parametrize("sr", [4000, 8000, 11025, 22050, 44056, 48000, 384000])
def test_resampling_gives_scipy_resample_polys_samples(sr):
    """Same filter, same float32 sums in the same order: the samples scipy.signal.resample_poly gives (the procedural
    data's content hash depends on them), for common and odd rates and for clips of 1 sample up to 3 s."""
    from fractions import Fraction
    from scipy.signal import resample_poly
    rng = np.random.default_rng(sr)
    ratio = Fraction(16000, sr).limit_denominator(10000)
    for n in (1, 7, 1000, 3 * sr + 17):
        x = (0.3 * rng.standard_normal(n)).astype(np.float32)
        ours, theirs = resample(x, sr), resample_poly(x, ratio.numerator, ratio.denominator)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        # Identical on the CPUs measured; the taps are designed in float64 with numpy's kaiser, not scipy's, so
        # allow the last bit of a float32 sum on others.
        assert np.allclose(ours, theirs, rtol=0, atol=4e-7 * max(1.0, float(np.abs(theirs).max()))), (sr, n)


def test_loading_audio_to_resample_does_not_import_scipy_signal(tmp_path):
    """The CLI's start-up: scipy.signal took a second to import on the 2-core CPUs, for one resampling call."""
    sf.write(tmp_path / "a.wav", tone(22050, 2.0, 300.0), 22050)
    code = ("import sys; from model_core.audio import load_audio; y = load_audio(sys.argv[1]); "
            "print(len(y), 'scipy.signal' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.wav")], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["32000", "False"]


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_mixed_to_mono(tmp_path, channels):
    data = tone(16000, channels=channels)
    data[:, 0] = 0.0  # a silent first channel must not cancel the others
    sf.write(tmp_path / "a.wav", data, 16000)
    y = load_audio(tmp_path / "a.wav")
    assert y.ndim == 1 and np.abs(y).max() == pytest.approx(0.5 * (channels - 1) / channels, rel=1e-3)


def test_non_ascii_path_with_spaces(tmp_path):
    folder = tmp_path / "Sprache ünd Gesten 音声"
    folder.mkdir()
    sf.write(folder / "Grüße aus Köln.wav", tone(16000), 16000)
    assert len(load_audio(folder / "Grüße aus Köln.wav")) == 16000


def test_errors_are_specific(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "noise.wav").write_bytes(os.urandom(5000))
    with pytest.raises(AudioError, match="cannot read noise.wav"):
        load_audio(tmp_path / "noise.wav")
    sf.write(tmp_path / "full.wav", tone(16000), 16000)
    (tmp_path / "trunc.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:30])
    with pytest.raises(AudioError, match="trunc.wav"):
        load_audio(tmp_path / "trunc.wav")
    bad = tone(16000).astype(np.float32)
    bad[100] = np.nan
    bad[200] = np.inf
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 non-finite"):
        load_audio(tmp_path / "nan.wav")


def test_header_only_wav_has_no_samples(tmp_path):
    with wave.open(str(tmp_path / "h.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "h.wav")


def wav_with(path, header_rate=None, declared_bytes=None, seconds=1.0):
    """A real 16-bit WAV whose header's sample rate or data size is then rewritten (as a damaged file would be)."""
    sf.write(path, tone(16000, seconds), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    if header_rate is not None:
        raw[24:28] = header_rate.to_bytes(4, "little")
    if declared_bytes is not None:
        raw[40:44] = declared_bytes.to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("rate", [1, 7, 2 ** 31 - 1, 1_000_000])
def test_header_sample_rate_outside_4_to_384_khz_is_refused(tmp_path, rate):
    path = wav_with(tmp_path / "rate.wav", header_rate=rate, seconds=9.0)  # 288 KB: 1 Hz would mean 80 hours
    with pytest.raises(AudioError, match=f"declares a sample rate of {rate} Hz, outside 4-384 kHz"):
        load_audio(path)


def test_truncated_wav_names_the_truncation(tmp_path):
    path = wav_with(tmp_path / "t.wav", seconds=3.0)
    path.write_bytes(path.read_bytes()[:44 + 2240])  # 0.07 s of the declared 3 s
    with pytest.raises(AudioError, match=r"truncated: its header declares 3.00 s but only 0.07 s are present"):
        load_audio(path)


def test_streamed_wav_with_an_open_size_still_loads(tmp_path):
    path = wav_with(tmp_path / "s.wav", declared_bytes=0xFFFFFFFF)  # what writers that cannot seek leave
    assert abs(len(load_audio(path)) - 16000) <= 1


@pytest.mark.parametrize("peak", [1e30, float(np.finfo(np.float32).max), 100.0])
def test_float_audio_far_beyond_full_scale_is_refused(tmp_path, peak):
    sf.write(tmp_path / "loud.wav", (tone(16000) * peak / 0.5).astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="audio level is out of range: samples reach"):
        load_audio(tmp_path / "loud.wav")


def test_float_audio_slightly_over_full_scale_loads_unchanged(tmp_path):
    sf.write(tmp_path / "hot.wav", (tone(16000) * 3).astype(np.float32), 16000, subtype="FLOAT")  # peak 1.5
    assert np.abs(load_audio(tmp_path / "hot.wav")).max() == pytest.approx(1.5, rel=1e-3)


def test_special_files_are_named_for_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioError, match="is a FIFO"):
        load_audio(tmp_path / "pipe.wav")  # and does not block waiting for a writer
    with pytest.raises(AudioError, match="is a device"):
        load_audio("/dev/zero")
    with pytest.raises(AudioError, match="virtual file .* /proc"):
        load_audio("/proc/self/environ")


def test_overlong_path_and_latin1_file_name(tmp_path):
    with pytest.raises(AudioError, match=r"cannot open the audio file \(File name too long\): .*\.\.\."):
        load_audio(tmp_path / ("x" * 5000 + ".wav"))
    latin1 = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav"))  # not UTF-8: a surrogate in str
    sf.write(tmp_path / "ok.wav", tone(16000), 16000)
    os.rename(tmp_path / "ok.wav", latin1)
    assert len(load_audio(latin1)) == 16000
