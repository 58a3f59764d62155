"""Long-audio generation: window arithmetic, seeds carried across windows, blending, cancel, variations."""
import copy
import json
import statistics

import numpy as np
import pytest
import torch

from model_core.network import ModelConfig, PoseDiffusion
from model_core import precision
from model_core.pipeline import Cancelled, Progress, generate
from model_core.timing import output_frames, window_count
from model_core.settings import GenerationSettings


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


def official_fade_out(out_dir_vec: np.ndarray, end_padding_duration: int, n_smooth: int = 4) -> np.ndarray:
    """The official fade_out branch of generate_gestures (test_ted.py), restated for one (frames, D) sequence."""
    start_frame = len(out_dir_vec) - int(end_padding_duration / 16000 * 15)
    end_frame = start_frame + n_smooth * 2
    if len(out_dir_vec) < end_frame:
        out_dir_vec = np.pad(out_dir_vec, [(0, end_frame - len(out_dir_vec)), (0, 0)], mode="constant")
    out_dir_vec[end_frame - n_smooth:] = np.zeros(out_dir_vec.shape[1])
    y = out_dir_vec[start_frame:end_frame]
    x = np.array(range(0, y.shape[0]))
    w = np.ones(len(y))
    w[0] = 5
    w[-1] = 5
    coeffs = np.polyfit(x, y, 2, w=w)
    fitted = np.transpose(np.asarray([np.poly1d(coeffs[:, k])(x) for k in range(y.shape[1])]))
    out_dir_vec[start_frame:end_frame] = fitted
    return out_dir_vec


@pytest.mark.parametrize("n_samples", [60000, 20000, 36266 + 32000])
def test_fade_out_is_the_official_option(tiny, n_samples):
    """Anchored where the audio ends (the last window's padding), 2 x 4 frames refit, mean pose after: bit for bit
    the official computation on the same whole-window output."""
    audio = np.random.default_rng(2).standard_normal(n_samples).astype(np.float32)
    plain = generate(tiny, audio, GenerationSettings(steps=3, trim=False))
    faded = generate(tiny, audio, GenerationSettings(steps=3, fade_out=True, trim=False))
    last_start = int(np.floor(2.0 * (window_count(n_samples) - 1) / (n_samples / 16000) * n_samples))
    padding = max(0, 36266 - (n_samples - last_start))
    for v in range(plain.shape[0]):
        np.testing.assert_array_equal(faded[v], official_fade_out(plain[v].copy(), padding))
    start = plain.shape[1] - int(padding / 16000 * 15)
    np.testing.assert_array_equal(faded[:, :start], plain[:, :start])  # nothing before the audio's end changes
    if padding:  # else the audio fills the last window and the whole fade lies after it
        assert not np.allclose(faded[:, start:plain.shape[1]], plain[:, start:])
    assert faded.shape[1] == max(plain.shape[1], start + 8), "padded when the fade runs past the last window"
    trimmed = generate(tiny, audio, GenerationSettings(steps=3, fade_out=True))
    np.testing.assert_array_equal(trimmed, faded[:, :trimmed.shape[1]])
    assert trimmed.shape[1] == max(output_frames(n_samples), start + 8), "trimming keeps the whole fade"


def test_auto_precision_is_measured_by_the_first_runs_then_cached(tiny, tmp_path, monkeypatch):
    """auto on a CPU times each candidate on the model's own step in the first MEASURED_RUNS runs (processes) of a
    combination, keeps the fastest over them, and then reads it back without measuring."""
    monkeypatch.setenv("DIFFGESTURE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "load_per_core", lambda: 0.0)
    cpu = torch.device("cpu")
    rows, real = [], precision.guided_step
    monkeypatch.setattr(precision, "guided_step",
                        lambda model, p, x, *a: rows.append(x.shape[0]) or real(model, p, x, *a))

    def choose() -> tuple[str, str]:
        monkeypatch.setattr(precision, "_memo", {})  # each call stands for a new process
        return precision.choose_precision(tiny, "auto", "fast", 2, 1.15, cpu)
    for n in range(1, precision.MEASURED_RUNS + 1):
        choice, how = choose()
        assert how.startswith("auto, measured now (" + ("1 run" if n == 1 else f"median of {n} runs"))
        (key, entry), = json.loads((tmp_path / "precision.json").read_text()).items()
        assert len(entry["runs"]) == n
    assert set(rows) == {2}, "measured on the batch it will run: 2 variations (guidance doubles them in the step)"
    assert precision.cpu_name() in key and torch.__version__ in key and "guided batch 4" in key
    names = precision.candidates("fast")
    for name in names:
        assert entry["ms_per_step"][name] == pytest.approx(statistics.median(r["ms_per_step"][name]
                                                                             for r in entry["runs"]), abs=1e-3)
    assert choice == entry["choice"] == min(names, key=entry["ms_per_step"].get)
    monkeypatch.setattr(precision, "guided_step", real)
    monkeypatch.setattr(precision, "calibrate", lambda *a: pytest.fail("measured again despite the cache"))
    assert choose() == (choice, f"auto, measured earlier on this CPU (median of {precision.MEASURED_RUNS} runs): "
                                + precision._describe(entry["ms_per_step"]))


def test_auto_precision_takes_the_fastest_over_runs_not_one_noisy_run(tiny, tmp_path, monkeypatch):
    """One run on a momentarily slow host (which no load average shows) does not decide: the median over the
    measured runs does. The stored measurements of older or damaged entries are measured over."""
    monkeypatch.setenv("DIFFGESTURE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "load_per_core", lambda: 0.0)
    monkeypatch.setattr(precision, "candidates", lambda sampler: ["exact", "fp32"])
    measured = iter([{"exact": 10.0, "fp32": 14.0}, {"exact": 9.5, "fp32": 8.0}, {"exact": 9.8, "fp32": 8.3}])
    monkeypatch.setattr(precision, "calibrate", lambda *a: next(measured))

    def choose() -> str:
        monkeypatch.setattr(precision, "_memo", {})
        return precision.choose_precision(tiny, "auto", "fast", 1, 1.15, torch.device("cpu"))[0]
    assert choose() == "exact", "one run: its fastest"
    assert choose() == "exact", "two runs: medians exact 9.75, fp32 11.0 ms"
    assert choose() == "fp32", "three runs: medians exact 9.8, fp32 8.3 ms; the slow moment no longer decides"
    path = tmp_path / "precision.json"
    (key, entry), = json.loads(path.read_text()).items()
    assert entry["ms_per_step"] == {"exact": 9.8, "fp32": 8.3}
    for damaged in ({"choice": "exact", "ms_per_step": {"exact": 1.0}},  # the format before runs were kept
                    {"runs": [{"ms_per_step": {"exact": 1.0}, "load_per_core": 0.0}]}, {"runs": "x"}, []):
        path.write_text(json.dumps({key: damaged}))
        measured = iter([{"exact": 3.0, "fp32": 2.0}])
        assert choose() == "fp32"
        assert len(json.loads(path.read_text())[key]["runs"]) == 1


def test_auto_precision_measured_on_a_busy_machine_is_measured_again_when_quiet(tiny, tmp_path, monkeypatch):
    """A choice measured under load (load average per core above BUSY_LOAD) serves while the machine stays busy and
    is replaced by the measurements of the next runs on a quiet machine, which then stay."""
    monkeypatch.setenv("DIFFGESTURE_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    load = {"now": 3.0}
    monkeypatch.setattr(precision, "load_per_core", lambda: load["now"])
    calls = []
    real = precision.calibrate
    monkeypatch.setattr(precision, "calibrate", lambda *a: calls.append(load["now"]) or real(*a))

    def choose() -> str:
        monkeypatch.setattr(precision, "_memo", {})  # each call stands for a new process
        return precision.choose_precision(tiny, "auto", "fast", 1, 1.15, cpu)[1]
    assert choose().startswith("auto, measured now") and calls == [3.0]
    assert choose().startswith("auto, measured earlier") and calls == [3.0], "still busy: the busy measure serves"
    load["now"] = 0.1
    assert choose().startswith("auto, measured now (1 run)") and calls == [3.0, 0.1], "quiet now: measured again"
    (entry,) = json.loads((tmp_path / "precision.json").read_text()).values()
    assert [run["load_per_core"] for run in entry["runs"]] == [0.1], "the busy measurement is dropped"
    load["now"] = 3.0
    assert choose().startswith("auto, measured earlier") and calls == [3.0, 0.1], "busy: no measuring"
    load["now"] = 0.1
    for n in range(2, precision.MEASURED_RUNS + 1):
        assert choose().startswith("auto, measured now") and len(calls) == n + 1
    assert choose().startswith("auto, measured earlier") and len(calls) == precision.MEASURED_RUNS + 1


def test_a_model_copies_after_running_in_fp32(tiny):
    """The packed weights fp32 keeps for a model live beside it: the model still deep-copies (a training script's
    EMA copy, a benchmark's variant) after a run."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, tiny.cfg.n_poses, tiny.cfg.pose_dim), generator=gen)
    context = torch.randn((1, tiny.cfg.n_poses, tiny.cfg.in_size), generator=gen)
    def step(model: PoseDiffusion) -> torch.Tensor:
        with torch.inference_mode():
            return precision.guided_step(model, "fp32", x, model.schedule.betas[5].view(1), context,
                                         model.null_context(1), 1.15)
    eps = step(tiny)
    twin = copy.deepcopy(tiny)
    again = step(twin)
    torch.testing.assert_close(again, eps, rtol=0, atol=0)


def test_guidance_one_runs_only_the_conditional_rows(tiny):
    """At guidance 1, eps_u + 1 (eps_c - eps_u) is eps_c: the denoiser runs the B conditional rows only (half the
    work of the 2B guided batch), and gives what the two-row formula gives, to float rounding; the packed fp32 copy
    is made for the rows really run."""
    from model_core.network import guided_rows
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((2, tiny.cfg.n_poses, tiny.cfg.pose_dim), generator=gen)
    context = torch.randn((2, tiny.cfg.n_poses, tiny.cfg.in_size), generator=gen)
    beta, null = tiny.schedule.betas[40].view(1), tiny.null_context(2)
    rows = []
    hook = tiny.diffusion_net.net.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        with torch.inference_mode():
            one = tiny.guided_eps(x, beta, context, null, 1.0)
            two = tiny.guided_eps(x, beta, context, null, 1.15)
            eps_u, eps_c = tiny.denoise(torch.cat([x, x]), beta.expand(4), torch.cat([null, context])).chunk(2)
    finally:
        hook.remove()
    assert rows == [2, 4, 4] and guided_rows(2, 1.0) == 2 and guided_rows(2, 1.15) == 4
    torch.testing.assert_close(one, eps_u + 1.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two, eps_u + 1.15 * (eps_c - eps_u), rtol=0, atol=0)
    with torch.inference_mode():
        for p in ("exact", "fp32"):
            torch.testing.assert_close(precision.guided_step(tiny, p, x, beta, context, null, 1.0), one,
                                       rtol=1e-4, atol=1e-5)


def test_auto_precision_rules(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGESTURE_CACHE_DIR", str(tmp_path))
    assert precision.choose_precision(tiny, "bf16", "fast", 1, 1.15, torch.device("cpu")) == ("bf16", "requested")
    assert precision.choose_precision(tiny, "auto", "fast", 1, 1.15, torch.device("cuda"))[0] == "fp32", \
        "on GPUs bf16 autocast measured slower for this model"
    assert "bf16" not in precision.candidates("paper"), "the paper sampler stays in float32"
    assert ("bf16" in precision.candidates("fast")) == precision.cpu_native_bf16()
    (tmp_path / "precision.json").write_text("{not json")  # a damaged cache is measured over, not fatal
    monkeypatch.setattr(precision, "_memo", {})
    assert precision.choose_precision(tiny, "auto", "paper", 1, 1.15, torch.device("cpu"))[0] in ("exact", "fp32")
    assert json.loads((tmp_path / "precision.json").read_text())


def test_intensity_scales_the_gesture_about_the_mean_pose(tiny):
    """generate() gives the poses as sampled whatever the intensity; at_intensity, the one place it is applied: 0 is
    the mean pose, 2 doubles every deviation from it (then directions are renormalised), 1 is unchanged; outside
    0..3 is refused with the setting's name."""
    from model_core.skeleton import TED_GESTURE, at_intensity, directions_at, poses_to_canonical
    audio = np.random.default_rng(4).standard_normal(30000).astype(np.float32) * 0.1
    base = dict(steps=3, seed=2, precision="fp32")
    plain = generate(tiny, audio, GenerationSettings(**base))
    np.testing.assert_array_equal(generate(tiny, audio, GenerationSettings(intensity=2.0, **base)), plain)
    assert at_intensity(plain, 1.0) is plain
    np.testing.assert_array_equal(at_intensity(plain, 2.0), 2 * plain)
    assert not at_intensity(plain, 0.0).any()
    np.testing.assert_array_equal(directions_at(plain, 0.5, TED_GESTURE),
                                  poses_to_canonical(plain * np.float32(0.5), TED_GESTURE))
    dirs = directions_at(plain, 0.0, TED_GESTURE)
    np.testing.assert_allclose(dirs, np.broadcast_to(poses_to_canonical(np.zeros(27), TED_GESTURE), dirs.shape),
                               atol=1e-6)
    for bad in (-0.5, 3.5, float("nan")):
        with pytest.raises(ValueError, match="intensity"):
            GenerationSettings(intensity=bad).validate()
