"""training/procedural.py against issue 14: gesture structure on fresh clips, and the gesture measure itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_core.timing import FPS
from model_core.skeleton import TED_GESTURE, from_directions
from training import data, procedural
from training.evaluate import (GESTURE_TARGETS, clip_motion, evaluate, forearm_directions, gesture_measure,
                               markdown_table, meets_targets, pause_frames)


def crash_once(item: tuple[str, int]) -> int:
    """A job whose process dies (as in a native crash) the first time it meets item 3."""
    marker, value = Path(item[0]), item[1]
    if value == 3 and not marker.exists():
        marker.touch()
        os._exit(3)
    return 10 * value


def crash_always(item: tuple[str, int]) -> int:
    os._exit(3)


def test_a_dead_worker_process_is_replaced_not_waited_for(tmp_path):
    """--jobs N: a process that dies is replaced and its items done again, in order; one that always dies is an error
    after the retries (multiprocessing.Pool hung here for ever after a worker's segfault)."""
    marker = tmp_path / "crashed"
    work = [(str(marker), i) for i in range(7)]
    assert list(procedural.in_processes(crash_once, work, jobs=2)) == [10 * i for i in range(7)]
    assert marker.exists(), "the job did die once"
    with pytest.raises(RuntimeError, match="died 3 times"):
        list(procedural.in_processes(crash_always, work[:2], jobs=2, retries=2))


CACHE_SPY = """
import sys
from pathlib import Path
from training import procedural

cache, out = Path(sys.argv[1]), sys.argv[2]
def files():
    return {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.nb*")}
real, seen = procedural.in_processes, []
def spy(job, work, jobs):
    seen.append(files())
    yield from real(job, work, jobs)
procedural.in_processes = spy
procedural.build(out, "ted_gesture", n_clips=3, seed=7, duration=4.0, jobs=2)
print(sorted(seen[0]))
written = sorted(set(files().items()) - set(seen[0].items()))
print("unchanged" if not written else f"written by the processes: {written}")
"""


def test_processes_only_read_numba_cache_the_first_clip_wrote(tmp_path):
    """--jobs N on an empty numba cache: librosa's gufuncs are compiled and cached in this process, by the first clip,
    before any process starts, and no process writes the cache (two writing at once left a cache that segfaults
    every later process in CI: numba issue 10128)."""
    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    run = subprocess.run([sys.executable, "-c", CACHE_SPY, str(cache), str(tmp_path / "d")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    before, verdict = run.stdout.strip().splitlines()[-2:]
    assert "guf-pitch._pi_wrapper" in before and "pitch._pi_wrapper" in before, before
    assert verdict == "unchanged", verdict


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> data.WindowDataset:
    """Four fresh 20 s clips (about 80 s of espeak-ng speech with pauses)."""
    root = tmp_path_factory.mktemp("gesture") / "d"
    procedural.build(root, "ted_gesture", n_clips=4, seed=11, duration=20.0, jobs=2)
    return data.WindowDataset(root, motion_filters=False, min_words=0)


def test_fresh_clips_meet_the_gesture_targets(fresh):
    clips = clip_motion(None, fresh, None, 4)
    m = gesture_measure(clips, fresh.skeleton)
    assert m["pause_frames"] > 60, "the clips have long pauses to measure rest in"
    assert all(meets_targets(m).values()), {k: (round(m[k], 2), GESTURE_TARGETS[k]) for k in GESTURE_TARGETS}


def test_rest_is_exactly_still_and_gestures_reach_the_gesture_space(fresh):
    for poses, audio in clip_motion(None, fresh, None, 4):
        d = forearm_directions(poses, fresh.skeleton)
        pause = pause_frames(procedural.voiced_frames(audio, len(poses)))
        runs = procedural._runs(pause)
        assert runs, "every clip has a long pause"
        # no noise, sway or breathing on the limbs at rest; the hands' paths are smoothed (PATH_SMOOTHING), so a
        # retraction's last settling or a preparation's first start can reach a pause's edge, by under 0.15 degrees
        rests = []
        for s, e in runs:
            rest = poses[(s + e) // 2]
            assert np.abs(poses[s:e] - rest).max() < 2e-3
            ang = np.degrees(np.arccos(np.clip((d[s:e] * d[(s + e) // 2]).sum(-1), -1, 1)))
            assert ang.max() < 0.15
            rests.append(rest)
        # the same rest pose in every pause of a clip: the hands retract to it
        assert np.abs(np.array(rests) - rests[0]).max() < 2e-3
        # in speech the forearms leave rest by tens of degrees (up to chest and face height)
        cos = np.clip((d * d[runs[0][0]]).sum(-1), -1, 1)
        assert np.degrees(np.arccos(cos)).max() > 45


def test_strokes_land_on_accented_onsets():
    rng = np.random.default_rng(0)
    t = np.arange(150) / FPS
    speech = procedural.Speech(loud=np.zeros(150), units=[[(1.0, 2.4)], [(4.0, 6.0)]],
                               onsets=np.array([1.1, 1.5, 1.9, 4.05, 4.6, 5.0, 5.5]),
                               accent=np.array([0.3, 0.9, 0.2, 0.4, 0.8, 0.3, 0.7]))
    style = procedural.Style(dominant=-1.0, expansive=1.0, beat_rate=1.0,
                             rest={1.0: np.array([0.3, -0.3, -0.2]), -1.0: np.array([-0.3, -0.3, -0.2])})
    paths, strokes, beats = procedural.hand_paths(speech, t, rng, style)
    # each phrase's most accented onset in its first 0.8 s carries the first stroke
    assert [o for o, _ in strokes][:1] == [1.5] and 4.6 in [o for o, _ in strokes]
    speed = {h: np.r_[0, np.linalg.norm(np.diff(p, axis=0), axis=1)] * FPS for h, p in paths.items()}
    lead = max(speed, key=lambda h: speed[h].sum())
    # the stroke ends at its onset: the hand moves fast up to 1.54 s, then holds (relaxing slowly)
    assert speed[lead][(t > 1.2) & (t <= 1.54)].mean() > 3 * speed[lead][(t > 1.6) & (t < 1.75)].mean()
    # at rest before the first unit, in the 1.6 s pause (after retraction) and at the end: exactly still
    for a, b in ((0, int(0.4 * FPS)), (int(3.2 * FPS), int(3.4 * FPS)), (int(7.2 * FPS), 150)):
        for h in paths:
            assert np.abs(paths[h][a:b] - style.rest[h]).max() < 1e-9
    assert beats and all(1.0 <= b <= 6.1 for b, _ in beats), "beats only inside units"


def test_gesture_measure_catches_a_tremor_at_rest(fresh):
    """The measure is not just quiet data: noise at rest fails jitter and pause speed, stillness fails spread."""
    poses, audio = clip_motion(None, fresh, None, 1)[0]
    noisy = poses + 0.02 * np.random.default_rng(0).standard_normal(poses.shape).astype(np.float32)
    m = gesture_measure([(noisy, audio)], TED_GESTURE)
    assert not meets_targets(m)["rest_jitter"] and not meets_targets(m)["pause_speed"]
    still = np.repeat(poses[:1], len(poses), axis=0)
    m = gesture_measure([(still, audio)], TED_GESTURE)
    assert m["speech_spread"] == pytest.approx(0, abs=1e-3) and m["pause_speed"] == pytest.approx(0, abs=1e-3)
    # a forearm turning at a known rate reads back in degrees per second
    turn = np.radians(30.0) / FPS * np.arange(len(poses))  # 30 deg/s about the vertical axis
    dirs = np.repeat(TED_GESTURE.mean[None] / np.linalg.norm(TED_GESTURE.mean, axis=-1, keepdims=True),
                     len(poses), axis=0)
    dirs[:, TED_GESTURE.bone_index("left_forearm")] = np.stack([np.sin(turn), 0 * turn, np.cos(turn)], axis=-1)
    m = gesture_measure([(from_directions(dirs, TED_GESTURE), audio)], TED_GESTURE)
    assert m["pause_speed"] == pytest.approx(15.0, rel=1e-3)  # mean of the two forearms: 30 and 0


def test_evaluate_reports_the_measure_for_samplers_and_baselines(fresh, ckpt):
    """A real (small, official-layout) checkpoint on whole clips: every row carries the gesture measure."""
    result = evaluate(str(ckpt), str(fresh.root), ["fast:2"], baselines=True, motion_clips=2, motion_only=True)
    rows = result["rows"]
    assert set(rows) == {"fast:2", "shuffled audio (fast:2)", "mean pose", "real (reference)"}
    assert all(set(GESTURE_TARGETS) <= set(r["gesture"]) for r in rows.values())
    assert all(meets_targets(rows["real (reference)"]["gesture"]).values())
    still = rows["mean pose"]["gesture"]
    assert still["speech_spread"] == pytest.approx(0, abs=1e-3) and still["speech_pause_ratio"] == 0
    assert rows["fast:2"]["gesture"] != rows["shuffled audio (fast:2)"]["gesture"]
    table = markdown_table(result)
    assert "spread ° (≥ 18)" in table and "✗" in table  # a target missed is marked (the mean pose's spread)


def test_speech_comes_from_three_synthesizers_and_one_voice_stays_out(tmp_path):
    """espeak-ng, flite and festival each speak (real audio, the same twice, rate and pitch applied); clips draw
    from all three; the held-out voice is never in training data and is the only voice of --voices held-out."""
    synths = {v.split(":")[0] for v in procedural.TRAIN_VOICES}
    assert synths == {"espeak-ng", "flite", "festival"} and not set(procedural.HELD_OUT_VOICES) & set(
        procedural.TRAIN_VOICES)
    for synth in sorted(synths):
        voice = next(v for v in procedural.TRAIN_VOICES if v.startswith(f"{synth}:"))
        normal = procedural.speak("we think about the future.", voice, 1.0, 0.0, tmp_path)
        again = procedural.speak("we think about the future.", voice, 1.0, 0.0, tmp_path)
        fast = procedural.speak("we think about the future.", voice, 1.25, 2.0, tmp_path)
        assert np.array_equal(normal, again), voice
        assert len(normal) > 0.8 * 16000 and np.sqrt(np.mean(normal ** 2)) > 0.01, voice
        assert len(fast) < 0.9 * len(normal), f"{voice}: rate 1.25 speaks faster"
    picked = {procedural.pick_voice(np.random.default_rng(i), procedural.TRAIN_VOICES) for i in range(60)}
    assert {v.split(":")[0] for v in picked} == synths and not picked & set(procedural.HELD_OUT_VOICES)
    index = procedural.build(tmp_path / "voice", "ted_gesture", n_clips=1, seed=3, duration=4.0, voices="held-out")
    assert [c["meta"]["voice"] for c in index["clips"]] == list(procedural.HELD_OUT_VOICES)
    assert index["source"] != procedural.recipe(1, 3, 4.0)  # train and held-out data are different recipes


def test_recording_conditions_change_the_sound_not_the_pauses_or_the_motion(tmp_path):
    """record(): a clip's speech as a microphone might take it (room, band, compression, background noise) at the
    levels real files have, within full scale, the same for the same draw; pauses stay below the voiced-frame
    threshold, and the motion, made from the clean speech on its own random stream, is the clip's either way."""
    clean, _, _ = procedural.make_speech(np.random.default_rng(4), 8.0, tmp_path)
    frames = int(len(clean) / procedural.HOP)
    silent = np.convolve(np.abs(clean) == 0, np.ones(801), "same") == 801  # samples deep inside the pauses
    levels, noisy_pauses, changed = [], 0, 0
    for i in range(16):
        rec = procedural.record(clean, np.random.default_rng(i))
        assert rec.dtype == np.float32 and rec.shape == clean.shape and np.abs(rec).max() <= 0.99 + 1e-6
        assert np.array_equal(rec, procedural.record(clean, np.random.default_rng(i)))
        levels.append(procedural._voiced_rms(rec))
        noisy_pauses += np.abs(rec[silent]).max() > 1e-4
        agree = procedural.voiced_frames(rec, frames) == procedural.voiced_frames(clean, frames)
        assert agree.mean() > 0.95, f"draw {i}: the pauses are still pauses"
        changed += np.corrcoef(rec, clean)[0, 1] < 0.999  # more than a change of level
    assert min(levels) < 0.06 and max(levels) > 0.12 and max(levels) <= 0.25 * 1.01, "levels real files have"
    assert 3 <= noisy_pauses <= 13, "about half the draws add background noise through the pauses"
    assert changed >= 10, "about one draw in eight only changes the level"
    skel = TED_GESTURE
    clip = procedural.make_clip(skel, 9, 0, 4.0, tmp_path)
    rng = np.random.default_rng([9, 0])
    speech, _, _ = procedural.make_speech(rng, 4.0, tmp_path)
    n = int(len(speech) / procedural.HOP)
    dirs = procedural.gesture_motion(procedural.analyse_speech(speech, n), n, skel, rng)
    from model_core.skeleton import canonical_to_poses
    assert np.array_equal(clip.poses, canonical_to_poses(dirs.astype(np.float32), skel))
    assert np.array_equal(clip.audio, procedural.record(speech, np.random.default_rng([9, 0, 1])))
    assert not np.array_equal(clip.audio, speech)
