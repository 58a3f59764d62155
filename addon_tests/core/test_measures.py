"""The gesture measure's additions for issue 25: frames past the audio, per-arm reporting, the smoothness measure
that needs no pauses (share of forearm motion power above 4 Hz) and the verdict on speech without pauses."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from addon_tests.paths import ROOT
from model_core.timing import FPS, SAMPLE_RATE, output_frames
from model_core.bvh import TO_BVH, write_bvh
from model_core.skeleton import TED_GESTURE, dataset_to_canonical, from_directions
from training import evaluate, mocap, procedural
from training.metrics import HF_CUTOFF, forearm_velocity_power, high_frequency_share


def speech(seconds: float) -> np.ndarray:
    """Real espeak-ng speech with a long pause, cut or padded to exactly `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        utt = procedural.speak("we think about the future every single day.", "espeak-ng:en", 1.0, 0.0, Path(tmp))
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), utt, np.zeros(2 * SAMPLE_RATE, np.float32),
                            utt])
    return np.pad(audio, (0, max(0, int(seconds * SAMPLE_RATE) - len(audio))))[:int(seconds * SAMPLE_RATE)]


def test_loudness_of_frames_past_the_audio_is_silence_not_nan():
    """The pipeline keeps the frame at the instant the audio ends (10 s -> 151 frames); on lengths that are a
    multiple of 0.2 s that frame's audio span is empty, and loudness averaged it to NaN for every frame."""
    assert output_frames(176000) == 166 and output_frames(16000 * 10) == 151
    loud = procedural.loudness(np.ones(176000, np.float32), 166)
    assert np.isfinite(loud).all() and loud[-1] < 1e-3 and np.allclose(loud[:-1], 1.0)
    audio = speech(5.0)
    n = output_frames(len(audio))
    loud = procedural.loudness(audio, n)
    hop = SAMPLE_RATE / FPS
    direct = np.array([np.sqrt(np.mean(audio[int(i * hop): int((i + 1) * hop)] ** 2) + 1e-12) for i in range(n - 1)])
    np.testing.assert_allclose(loud[:-1], np.clip(direct / np.percentile(np.r_[direct, 1e-6], 95), 0, 1), atol=1e-6)
    assert 0.2 < procedural.voiced_frames(audio, n).mean() < 0.9


def test_evaluate_speech_on_a_clip_of_a_whole_number_of_seconds(ckpt, tmp_path):
    """training.evaluate --speech on a 5.0 s real speech file: finite measures, per arm, and a verdict line."""
    import soundfile
    wav = tmp_path / "five.wav"
    soundfile.write(wav, speech(5.0), SAMPLE_RATE)
    out = tmp_path / "m.json"
    run = subprocess.run([sys.executable, "-m", "training.evaluate", "--checkpoint", str(ckpt), "--speech", str(wav),
                          "--variations", "1", "--samplers", "fast:2", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads(out.read_text())["gesture"]
    assert np.isfinite(m["speech_spread"]) and np.isfinite(m["hf_share"]) and m["speech_speed"] > 0
    assert set(m["arms"]) == {"left", "right"} and all(np.isfinite(a["speech_spread"]) for a in m["arms"].values())
    assert "verdict:" in run.stdout and "(L " in run.stdout and "R " in run.stdout


def turning(n: int, parts: list[tuple[float, float]]) -> np.ndarray:
    """Unit forearm directions (n, 2, 3): both arms swing about the x axis by sum of amp * sin(2 pi f t) (rad)."""
    t = np.arange(n) / FPS
    angle = sum(a * np.sin(2 * np.pi * f * t) for f, a in parts)
    d = np.stack([0 * t, np.sin(angle), -np.cos(angle)], axis=-1)
    return np.repeat(d[:, None], 2, axis=1)


def test_high_frequency_share_of_known_motions():
    """Slow swings put no power above 4 Hz, fast ones nearly all; a mix splits as the velocity amplitudes square."""
    slow = high_frequency_share(*forearm_velocity_power(turning(600, [(1.0, 0.3)])))
    fast = high_frequency_share(*forearm_velocity_power(turning(600, [(6.0, 0.05)])))
    assert slow.max() < 0.01 and fast.min() > 0.97
    mix = high_frequency_share(*forearm_velocity_power(turning(600, [(1.0, 0.2), (6.0, 0.02)])))
    def velocity(f: float, a: float) -> float:  # of a sine of amplitude a, by frame differences: 2 fps sin(pi f/fps) a
        return 2 * FPS * np.sin(np.pi * f / FPS) * a
    expected = velocity(6, 0.02) ** 2 / (velocity(1, 0.2) ** 2 + velocity(6, 0.02) ** 2)
    np.testing.assert_allclose(mix, expected, atol=0.01)
    assert forearm_velocity_power(turning(20, [(1.0, 0.3)])) is None, "shorter than one Welch segment"
    assert np.isnan(high_frequency_share(*forearm_velocity_power(turning(100, [(1.0, 0.0)])))).all(), "no motion, no share"
    assert HF_CUTOFF == 4.0


def poses_with(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Normalised poses with the mean pose everywhere but these forearm directions (frames, 3)."""
    dirs = np.repeat(TED_GESTURE.mean[None] / np.linalg.norm(TED_GESTURE.mean, axis=-1, keepdims=True),
                     len(left), axis=0)
    dirs[:, TED_GESTURE.bone_index("left_forearm")] = left
    dirs[:, TED_GESTURE.bone_index("right_forearm")] = right
    return from_directions(dirs, TED_GESTURE)


def test_per_arm_measure_and_both_arms_must_take_part():
    """One arm gesturing wide in speech, the other still: the pooled spread can pass while the still arm's fails,
    and the verdict fails (both arms take part)."""
    audio = speech(8.0)
    n = int(len(audio) / (SAMPLE_RATE / FPS))
    voiced = procedural.voiced_frames(audio, n)
    t = np.arange(n) / FPS
    swing = np.where(voiced, np.radians(70) * np.sin(2 * np.pi * 0.7 * t), 0.0)
    left = np.stack([np.sin(swing), 0 * t, -np.cos(swing)], axis=-1)
    still = np.repeat(np.array([[0.0, 0.0, -1.0]]), n, axis=0)
    m = evaluate.gesture_measure([(poses_with(left, still), audio)], TED_GESTURE)
    arms = m["arms"]
    assert arms["right"]["speech_spread"] == pytest.approx(0, abs=1e-3) and arms["left"]["speech_spread"] > 36
    assert m["speech_spread"] == pytest.approx(arms["left"]["speech_spread"] / 2, rel=1e-6)
    assert m["pause_frames"] > 0 and arms["right"]["pause_speed"] == pytest.approx(0, abs=1e-3)
    v = evaluate.verdict(m)
    assert v["targets"]["both"]["speech_spread"] and v["targets"]["left"]["speech_spread"]
    assert v["targets"]["right"]["speech_spread"] is False and not v["passed"]
    assert "speech_spread (right)" in evaluate.verdict_line(m)


def test_verdict_on_speech_without_pauses(monkeypatch):
    """Continuous speech: the pause targets are not measured (not failed), smoothness is judged against the motion
    capture value once it is set, and spread still counts."""
    with tempfile.TemporaryDirectory() as tmp:
        utt = procedural.speak("we think about the future every single day and it really matters because people "
                               "change their world", "espeak-ng:en", 1.3, 0.0, Path(tmp))
    n = int(len(utt) / (SAMPLE_RATE / FPS))
    t = np.arange(n) / FPS
    swing = np.radians(40) * np.sin(2 * np.pi * 0.8 * t)
    arm = np.stack([np.sin(swing), 0 * t, -np.cos(swing)], axis=-1)
    m = evaluate.gesture_measure([(poses_with(arm, arm * [-1, 1, 1]), utt)], TED_GESTURE)
    assert m["pause_frames"] == 0 and np.isnan(m["pause_speed"])
    monkeypatch.setattr(evaluate, "MOCAP_HF_SHARE", None)
    v = evaluate.verdict(m)
    assert v["passed"] and set(v["not_measured"]) == {*evaluate.PAUSE_TARGETS, "hf_share"}
    assert "no pauses" in evaluate.verdict_line(m)
    monkeypatch.setattr(evaluate, "MOCAP_HF_SHARE", 0.2)  # a smooth 0.8 Hz swing is far below 0.2 / 1.5
    v = evaluate.verdict(m)
    assert v["targets"]["both"]["hf_share"] is False and not v["passed"]
    monkeypatch.setattr(evaluate, "MOCAP_HF_SHARE", m["hf_share"])
    assert evaluate.verdict(m)["passed"]


def forearm_take(n: int, fps: float, parts: list[tuple[float, float]]) -> np.ndarray:
    """Canonical bone directions (n, bones, 3): the mean pose, the forearms swinging by sum of amp sin(2 pi f t)."""
    t = np.arange(n) / fps
    base = TED_GESTURE.mean / np.linalg.norm(TED_GESTURE.mean, axis=-1, keepdims=True)
    dirs = np.repeat(dataset_to_canonical(base, TED_GESTURE)[None], n, axis=0)
    swing = sum(a * np.sin(2 * np.pi * f * t) for f, a in parts)
    for side, sign in (("left", 1), ("right", -1)):
        d = np.stack([sign * np.sin(swing), -0.3 * np.cos(swing), -np.cos(swing)], axis=-1)
        dirs[:, TED_GESTURE.bone_index(f"{side}_forearm")] = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return dirs


def test_bvh_takes_map_to_forearm_directions_and_the_same_measure(tmp_path):
    """A BVH take read by forward kinematics gives back the forearm directions it was written from (the model's own
    BVH export, with its joint names) and so the same high-frequency share; a 60 fps take is resampled to 15 fps."""
    names = {"left": ("left_forearm", "left_forearm_end"), "right": ("right_forearm", "right_forearm_end")}
    forearms = [TED_GESTURE.bone_index("left_forearm"), TED_GESTURE.bone_index("right_forearm")]
    dirs = forearm_take(150, FPS, [(0.9, 0.6), (5.0, 0.05)])
    write_bvh(tmp_path / "take.bvh", dirs, TED_GESTURE)
    got = mocap.forearm_directions(mocap.read_bvh(tmp_path / "take.bvh"), names, hips=None)
    np.testing.assert_allclose(got, dirs[:, forearms] @ TO_BVH.T, atol=1e-5)  # in the file's axes (+Y up)
    shares = mocap.hf_shares([tmp_path / "take.bvh"], forearms=names, hips=None)
    direct = high_frequency_share(*forearm_velocity_power(dirs[:, forearms]))
    np.testing.assert_allclose(shares["pooled"][:2], direct, atol=1e-4)
    assert 0.05 < direct[0] < 0.95
    slow = forearm_take(240, 60.0, [(0.9, 0.6)])
    write_bvh(tmp_path / "take60.bvh", slow, TED_GESTURE, fps=60.0)
    got = mocap.forearm_directions(mocap.read_bvh(tmp_path / "take60.bvh"), names, hips=None)
    assert len(got) == 60
    np.testing.assert_allclose(got[3:-3], slow[::4, forearms][3:-3] @ TO_BVH.T, atol=2e-3)  # the filter's edges aside
    (tmp_path / "bad.bvh").write_text("HIERARCHY\nROOT Hips\n{\n}\nMOTION\nFrames: 99999999\nFrame Time: 0.01\n0\n")
    with pytest.raises(ValueError, match="declares 99999999 frames"):
        mocap.read_bvh(tmp_path / "bad.bvh")
