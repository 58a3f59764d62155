"""Re-rolling a frame range (model_core.reroll): the bundled model on real speech, the default (fast) settings.

Outside the range the clip is the input bit for bit; inside it is new motion that joins the kept motion without a
jump; the windows get the audio under their frames, the kept frames as their seed, and hold the frames after the
range; the worker and the command line do the same from a result file; bad ranges and mismatched takes are refused.
"""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from addon_tests.paths import ROOT
from model_core import pipeline
from model_core.audio import load_audio
from model_core.checkpoint import load_checkpoint
from model_core.client import WorkerClient, WorkerError
from model_core.pipeline import generate, generate_file
from model_core.protocol import ErrorKind, read_result
from model_core.reroll import check_range, reroll, reroll_file, windows_for
from model_core.settings import DEFAULT_CHECKPOINT, GenerationSettings
from model_core.skeleton import poses_to_canonical

START, END = 30, 55  # 2.0 s - 3.7 s of a 6 s clip


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "-s", "150", "Today I will show you how the hands follow the "
                    "rhythm of speech, and how they rest when the voice pauses."], check=True)
    return path


@pytest.fixture(scope="module")
def take(demo, speech):
    """A generated clip and two re-rolls of START..END with seed 7 and one with seed 8 (default settings)."""
    audio = load_audio(speech)
    base = generate(demo.model, audio, GenerationSettings(seed=0))
    seven = reroll(demo.model, audio, base, START, END, GenerationSettings(seed=7))
    again = reroll(demo.model, audio, base, START, END, GenerationSettings(seed=7))
    eight = reroll(demo.model, audio, base, START, END, GenerationSettings(seed=8))
    return audio, base, seven, again, eight


def steps(poses: np.ndarray, skeleton) -> np.ndarray:
    """Per frame-to-frame step, the largest bone rotation (degrees) of the first variation."""
    d = poses_to_canonical(poses[0], skeleton)
    return np.degrees(np.arccos(np.clip((d[1:] * d[:-1]).sum(-1), -1, 1))).max(-1)


def test_outside_the_range_is_kept_bit_for_bit_and_inside_is_new(take):
    audio, base, seven, _, _ = take
    assert base.shape[1] > END + 20, "the clip continues well after the range"
    assert np.array_equal(seven[:, :START], base[:, :START]) and np.array_equal(seven[:, END + 1:], base[:, END + 1:])
    inside = np.abs(seven[:, START:END + 1] - base[:, START:END + 1]).max(-1)[0]
    assert (inside[3:-3] > 1e-3).all(), "every frame inside the range (past the blends) is new motion"


def test_the_joins_are_no_larger_than_the_clips_own_steps(take, demo):
    _, base, seven, _, eight = take
    p95 = np.percentile(steps(base, demo.skeleton), 95)
    for new in (seven, eight):
        s = steps(new, demo.skeleton)
        joins = s[START - 1], s[END]  # into the first frame of the range, out of its last
        was = steps(base, demo.skeleton)
        print(f"\njoin steps {joins[0]:.2f} / {joins[1]:.2f} degrees (before: {was[START - 1]:.2f} / {was[END]:.2f}), "
              f"clip p95 {p95:.2f}")
        assert max(joins) <= 2 * p95, (joins, p95)
        assert s[START - 1:END + 1].max() <= 3 * p95, "no jump inside the range either"


def test_same_seed_same_motion_another_seed_another(take):
    _, _, seven, again, eight = take
    assert np.array_equal(seven, again)
    assert not np.allclose(seven[:, START + 3:END - 3], eight[:, START + 3:END - 3], atol=1e-3)


def test_windows_get_their_audio_their_seed_and_hold_the_kept_frames(demo, speech, monkeypatch):
    """Each window's audio starts at its first frame's time; window 0 is seeded with the 4 kept frames before the
    range; the finished windows equal the kept motion on every kept frame they cover."""
    audio = load_audio(speech)
    base = generate(demo.model, audio, GenerationSettings(seed=1, steps=4))
    first, n = windows_for(base.shape[1], START, END)
    assert (first, n) == (START - 4, 2)
    seen, raw = [], []
    real_context, real_window = demo.model.context, pipeline.sample_window

    def spy_context(a, pre_seq, batch_stats=False):
        seen.append((a.clone(), pre_seq.clone()))
        return real_context(a, pre_seq, batch_stats)

    def spy_window(*a, **k):
        raw.append(real_window(*a, **k).clone().numpy())
        return torch.from_numpy(raw[-1])
    monkeypatch.setattr(demo.model, "context", spy_context)
    monkeypatch.setattr("model_core.pipeline.sample_window", spy_window)
    reroll(demo.model, audio, base, START, END, GenerationSettings(seed=2, steps=4))
    assert len(seen) == n
    for w, (a, _) in enumerate(seen):
        at = round((first + 30 * w) * 16000 / 15)
        np.testing.assert_array_equal(a[0].numpy(), pipeline.audio_window(audio, at))
    pre = seen[0][1][0].numpy()
    np.testing.assert_array_equal(pre[:4, :27], base[0, first:START])
    assert (pre[:4, 27] == 1).all() and not pre[4:].any()
    np.testing.assert_allclose(raw[0][0, :4], base[0, first:START], atol=1e-6)
    after = np.arange(END + 1, min(first + 30 + 34, base.shape[1]))  # the kept frames the last window covers
    np.testing.assert_allclose(raw[1][0, after - first - 30], base[0, after], atol=1e-6)


@pytest.mark.parametrize("start,end,message", [(40, 39, "is empty"), (-1, 10, "outside the clip"),
                                               (10, 91, "outside the clip"), (2.5, 10, "whole frame")])
def test_bad_ranges_are_refused(start, end, message):
    with pytest.raises(ValueError, match=message):
        check_range(91, start, end)


def test_a_range_at_the_clips_ends_regenerates_its_edge(take, demo):
    """From frame 0 there is no seed (nothing before it), to the last frame no hold: both still work."""
    audio, base, _, _, _ = take
    head = reroll(demo.model, audio, base, 0, 10, GenerationSettings(seed=3, steps=4))
    tail = reroll(demo.model, audio, base, base.shape[1] - 10, base.shape[1] - 1, GenerationSettings(seed=3, steps=4))
    assert np.array_equal(head[:, 11:], base[:, 11:]) and not np.allclose(head[:, :8], base[:, :8])
    assert np.array_equal(tail[:, :-10], base[:, :-10]) and not np.allclose(tail[:, -8:], base[:, -8:])


def test_result_files_through_the_worker_and_the_command_line(demo, speech, tmp_path):
    """A generate result re-rolled by the worker's reroll request and by `python -m model_core reroll` (the same
    motion for the same seed); the take's intensity is kept; a take from another checkpoint or other audio is
    refused with its reason, a bad range with its; a take at intensity 0 keeps its motion, and re-rolls. The worker
    runs as a headless Blender's does, on the CLI's threads: beside the UI it takes a core less, and sums in another
    order differ in the last bits."""
    first = tmp_path / "take.npz"
    generate_file(demo, str(speech), str(first), GenerationSettings(seed=0, steps=6, intensity=1.5))
    client = WorkerClient(sys.executable, core_parent=ROOT, beside_ui=False)
    try:
        reply = client.reroll(first, speech, (START, END), tmp_path / "w.npz",
                              settings={"seed": 7}).wait(120)
        assert reply["seed"] == 7 and reply["frames"] == read_result(first)["poses"].shape[1]
        with pytest.raises(WorkerError, match="outside the clip") as err:
            client.reroll(first, speech, (START, 500), tmp_path / "x.npz", settings={"seed": 7}).wait(60)
        assert err.value.kind == ErrorKind.SETTINGS and not (tmp_path / "x.npz").exists()
    finally:
        client.shutdown()
    r = subprocess.run([sys.executable, "-m", "model_core", "reroll", str(first), "--range", str(START), str(END),
                        "--seed", "7", "-o", str(tmp_path / "c.npz")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["range"] == [START, END]
    kept, worker, cli = (read_result(tmp_path / n) for n in ("take.npz", "w.npz", "c.npz"))
    assert np.array_equal(worker["poses"], cli["poses"])
    assert np.array_equal(worker["poses"][:, :START], kept["poses"][:, :START])
    assert np.array_equal(worker["poses"][:, END + 1:], kept["poses"][:, END + 1:])
    assert worker["meta"]["settings"]["intensity"] == 1.5 and worker["meta"]["settings"]["steps"] == 6
    r = subprocess.run([sys.executable, "-m", "model_core", "reroll", str(first), "--range", "50", "40",
                        "-o", str(tmp_path / "e.npz")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "is empty" in r.stderr and not (tmp_path / "e.npz").exists()

    other = dataclasses.replace(demo, sha256="0" * 64)  # the same model under another checkpoint's digest
    with pytest.raises(ValueError, match="another checkpoint"):
        reroll_file(other, first, speech, tmp_path / "o.npz", START, END, {"seed": 7})
    short = tmp_path / "short.wav"
    subprocess.run(["espeak-ng", "-w", str(short), "Hello."], check=True)
    with pytest.raises(ValueError, match="give the take's own audio"):
        reroll_file(demo, first, short, tmp_path / "o.npz", START, END, {"seed": 7})
    rest = tmp_path / "rest.npz"
    generate_file(demo, str(speech), str(rest), GenerationSettings(steps=2, intensity=0.0))
    reroll_file(demo, rest, speech, tmp_path / "r.npz", START, END, {"seed": 7, "intensity": 1.0})
    rest, moved = read_result(rest), read_result(tmp_path / "r.npz")
    assert rest["poses"].any() and np.array_equal(moved["poses"][:, :START], rest["poses"][:, :START]), \
        "a take at intensity 0 keeps its motion: re-rolled at 1 it moves"
    assert np.array_equal(moved["directions"][:, :START], poses_to_canonical(rest["poses"][:, :START], demo.skeleton))


def first_version(path, result: dict, intensity: float) -> None:
    """A result as versions before 2 wrote it: no version, the poses scaled by the intensity."""
    meta = {k: v for k, v in result["meta"].items() if k != "version"}
    meta["settings"] = {**meta["settings"], "intensity": intensity}
    np.savez(path, poses=result["poses"] * np.float32(intensity), directions=result["directions"],
             meta=np.array(json.dumps(meta)))


def test_a_result_of_the_first_version_is_read_as_sampled(demo, speech, tmp_path):
    """A version 1 result (poses scaled by its intensity) re-rolls as the same take of version 2 does, outside the
    range to the float rounding of the unscaling; at intensity 0 it holds no motion and is refused with that reason;
    an unknown version is refused."""
    current = tmp_path / "take.npz"
    generate_file(demo, str(speech), str(current), GenerationSettings(seed=0, steps=4, intensity=1.5))
    take = read_result(current)
    assert take["meta"]["version"] == 2
    old = tmp_path / "old.npz"
    first_version(old, take, 1.5)
    for path, out in ((current, "new.npz"), (old, "old-rerolled.npz")):
        reroll_file(demo, path, speech, tmp_path / out, START, END, {"seed": 7})
    new, was = read_result(tmp_path / "new.npz"), read_result(tmp_path / "old-rerolled.npz")
    assert np.array_equal(new["poses"][:, :START], take["poses"][:, :START])
    np.testing.assert_allclose(was["poses"][:, :START], take["poses"][:, :START], rtol=1e-6, atol=1e-7)
    assert was["meta"]["version"] == 2 and was["meta"]["settings"]["intensity"] == 1.5
    first_version(old, take, 0.0)
    with pytest.raises(ValueError, match="intensity 0 .* by an earlier version"):
        reroll_file(demo, old, speech, tmp_path / "o.npz", START, END, {"seed": 7})
    np.savez(old, poses=take["poses"], directions=take["directions"],
             meta=np.array(json.dumps({**take["meta"], "version": 3})))
    with pytest.raises(ValueError, match="a result of version 3, which this version"):
        reroll_file(demo, old, speech, tmp_path / "o.npz", START, END, {"seed": 7})
    assert not (tmp_path / "o.npz").exists()
