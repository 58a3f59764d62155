"""Long-audio generation: window arithmetic, seeds carried across windows, blending, cancel, variations."""
import numpy as np
import pytest
import torch

from model_core.network import ModelConfig, PoseDiffusion
from model_core.pipeline import (Cancelled, Progress, cpu_native_bf16, generate, output_frames, resolve_precision,
                                 window_count)
from model_core.settings import GenerationSettings, preset


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PoseDiffusion(ModelConfig(hidden_dim=32, block_depth=2)).eval()


@pytest.mark.parametrize("seconds,windows,full", [(0.5, 1, 34), (34 / 15, 2, 64), (20.0, 10, 304), (60.0, 30, 904)])
def test_window_arithmetic(seconds, windows, full):
    n = int(round(seconds * 16000))
    assert window_count(n) == windows
    assert output_frames(n, trim=False) == full
    assert output_frames(n, trim=True) == min(full, int(seconds * 15) + 1)


def test_frames_for_a_clip_and_short_clip(tiny):
    audio = np.random.default_rng(0).standard_normal(int(7.3 * 16000)).astype(np.float32) * 0.1
    fast = GenerationSettings(steps=3)
    assert generate(tiny, audio, fast).shape == (1, 110, 27)
    assert generate(tiny, audio, GenerationSettings(steps=3, trim=False)).shape == (1, 34 + 30 * 3, 27)
    assert generate(tiny, audio[:8000], fast).shape == (1, 8, 27), "a 0.5 s clip is padded to one window"


def test_seeds_and_blend_across_windows(tiny, monkeypatch):
    """Window i > 0 is seeded with the previous window's last 4 raw frames, indicator 1, and blended over them."""
    seen, raw = [], []
    real_context, real_window = tiny.context, __import__("model_core.pipeline", fromlist=["x"]).sample_window

    def spy_context(audio, pre_seq, batch_stats=False):
        seen.append(pre_seq.clone())
        return real_context(audio, pre_seq, batch_stats)

    def spy_window(*a, **k):
        out = real_window(*a, **k)
        raw.append(out.clone().numpy())
        return out
    monkeypatch.setattr(tiny, "context", spy_context)
    monkeypatch.setattr("model_core.pipeline.sample_window", spy_window)
    audio = np.zeros(int(6.0 * 16000), np.float32)
    poses = generate(tiny, audio, GenerationSettings(steps=2, trim=False))
    assert len(seen) == 3
    assert torch.count_nonzero(seen[0]) == 0, "no seed: window 0's pre_seq is all zero"
    for i in (1, 2):
        np.testing.assert_allclose(seen[i][0, :4, :27].numpy(), raw[i - 1][0, -4:], atol=1e-6)
        assert torch.all(seen[i][0, :4, 27] == 1) and torch.count_nonzero(seen[i][0, 4:]) == 0
    j = np.arange(4).reshape(4, 1)
    np.testing.assert_allclose(poses[0, 30:34], raw[0][0, 30:] * (4 - j) / 5 + raw[1][0, :4] * (j + 1) / 5, atol=1e-6)
    np.testing.assert_allclose(poses[0, :30], raw[0][0, :30])


def test_given_seed_poses_fill_window_zero(tiny, monkeypatch):
    seen = []
    real = tiny.context
    monkeypatch.setattr(tiny, "context", lambda a, p, batch_stats=False: (seen.append(p.clone()), real(a, p))[1])
    seed = np.full((4, 27), 0.25, np.float32)
    generate(tiny, np.zeros(16000, np.float32), GenerationSettings(steps=1), seed_poses=seed)
    assert torch.all(seen[0][0, :4, :27] == 0.25) and torch.all(seen[0][0, :4, 27] == 1)


def test_progress_and_cancel(tiny):
    events: list[Progress] = []
    audio = np.zeros(int(10 * 16000), np.float32)
    out = generate(tiny, audio, GenerationSettings(steps=4), progress=events.append)
    assert out.shape[1] == 151 and events[-1].window == 4 and events[-1].windows == 5 and events[-1].fraction == 1.0
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 6
    with pytest.raises(Cancelled):
        generate(tiny, audio, GenerationSettings(steps=4), cancel=cancel)
    assert len(calls) == 7, "cancellation is checked at every step and stops at once"


def test_seeded_variations_are_reproducible_and_distinct(tiny):
    audio = np.random.default_rng(1).standard_normal(40000).astype(np.float32) * 0.1
    s = GenerationSettings(sampler="fast", steps=5, eta=0.5, seed=11, variations=3, precision="fp32")
    a, b = generate(tiny, audio, s), generate(tiny, audio, s)
    np.testing.assert_array_equal(a, b)
    assert a.shape[0] == 3 and not np.allclose(a[0], a[1])
    c = generate(tiny, audio, GenerationSettings(sampler="fast", steps=5, eta=0.5, seed=12, precision="fp32"))
    assert not np.allclose(a[0], c[0])


def test_fade_out_ends_at_the_mean_pose(tiny):
    audio = np.random.default_rng(2).standard_normal(60000).astype(np.float32)
    plain = generate(tiny, audio, GenerationSettings(steps=3, trim=False))
    faded = generate(tiny, audio, GenerationSettings(steps=3, fade_out=True, trim=False))
    np.testing.assert_array_equal(faded[:, :-8], plain[:, :-8])  # only the last 8 frames are eased
    assert not np.allclose(faded[:, -8:], plain[:, -8:])
    assert np.abs(faded[0, -1]).max() < 0.25 * np.abs(plain[0, -1]).max(), "the last frame nears the mean pose"


def test_auto_precision_is_bf16_only_for_the_fast_sampler_on_a_cpu_with_native_bf16():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    fast, paper = GenerationSettings(), preset("paper", precision="auto")
    assert resolve_precision(fast, cpu) == ("bf16" if cpu_native_bf16() else "fp32")
    assert resolve_precision(paper, cpu) == "fp32"
    assert resolve_precision(fast, gpu) == "fp32", "on GPUs bf16 autocast measured slower for this model"
    assert resolve_precision(GenerationSettings(precision="bf16"), gpu) == "bf16", "an explicit choice is kept"
