"""Audio loading: formats, channel mixing, resampling and specific errors, on real files."""
import os
import wave

import numpy as np
import pytest
import soundfile as sf

from model_core.audio import AudioError, load_audio


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
