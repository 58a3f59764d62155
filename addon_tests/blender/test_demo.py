"""The main job on the embedded default (issue 3): keyframes span the example speech, and the arms move more
while the voice speaks than in the clip's pauses (the bundled checkpoint learned to follow speech)."""
import json
import os
import subprocess
import sys
import wave

import bpy
import numpy as np
import pytest

from addon_tests.paths import ROOT, TORCH_PYTHON

SPEECH = ROOT / "examples" / "speech.wav"
ARM_BONES = ("mixamorig:LeftArm", "mixamorig:LeftForeArm", "mixamorig:RightArm", "mixamorig:RightForeArm")


def loudness(fps: float) -> tuple[np.ndarray, float]:
    """RMS of the example speech per frame at fps, and its duration."""
    with wave.open(str(SPEECH)) as w:
        sr, n = w.getframerate(), w.getnframes()
        x = np.frombuffer(w.readframes(n), np.int16).astype(np.float32) / 32768
    hop = sr / fps
    rms = np.array([np.sqrt(np.mean(x[int(i * hop):int((i + 1) * hop)] ** 2) + 1e-12) for i in range(int(n / hop))])
    return rms, n / sr


@pytest.fixture(scope="module")
def demo_blend(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "run_demo.py"), "--torch-python", str(TORCH_PYTHON),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out / "demo.blend"


def arm_speed(rig, frames: range) -> np.ndarray:
    """Angular speed (radians per frame) of the arm bones' world directions, summed over the bones."""
    scene = bpy.context.scene
    dirs = []
    for f in frames:
        scene.frame_set(f)
        mats = [rig.matrix_world @ rig.pose.bones[b].matrix for b in ARM_BONES]
        dirs.append([np.array(m.col[1][:3]) / np.linalg.norm(m.col[1][:3]) for m in mats])
    d = np.array(dirs)
    cos = np.clip((d[1:] * d[:-1]).sum(-1), -1, 1)
    return np.arccos(cos).sum(-1)


def open_demo(path):
    """Open the demo's .blend; return (scene, rig, scene fps, first and last keyed frame)."""
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    rig = bpy.data.objects["DemoCharacter"]
    first, last = rig.animation_data.action.frame_range
    return scene, rig, scene.render.fps / scene.render.fps_base, int(first), int(last)


def test_demo_preview_is_a_contact_sheet_and_a_video_with_sound(demo_blend):
    sheet = bpy.data.images.load(str(demo_blend.parent / "contact_sheet.png"))
    assert tuple(sheet.size) == (4 * 240, 2 * 320)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration", "-of", "json",
                            str(demo_blend.parent / "demo.mp4")], capture_output=True, text=True, check=True)
    streams = {s["codec_type"]: float(s["duration"]) for s in json.loads(probe.stdout)["streams"]}
    _, duration = loudness(24)
    assert set(streams) == {"video", "audio"}, "the MP4 carries the speech as its audio track"
    assert abs(streams["video"] - duration) < 0.2 and abs(streams["audio"] - duration) < 0.2


def test_demo_keys_span_the_example_clip(demo_blend):
    scene, rig, fps, first, last = open_demo(demo_blend)
    _, duration = loudness(fps)
    assert first == scene.frame_start == 1
    assert abs((last - first) / fps - duration) < 1.5 / fps, "keys span the example clip at the scene's frame rate"
    strips = [s for s in scene.sequence_editor.strips_all if s.type == "SOUND"]
    assert len(strips) == 1 and strips[0].frame_start == 1
    assert arm_speed(rig, range(first, last + 1)).mean() > 0.01, "the arms move"


def test_demo_arms_move_more_in_speech_than_in_pauses(demo_blend):
    _, rig, fps, first, last = open_demo(demo_blend)
    rms, _ = loudness(fps)
    speed = arm_speed(rig, range(first, last + 1))
    speaking = rms[:len(speed)] > 0.02
    # Frames well inside a pause count as rest: 0.55 s from any speech, as the gesture measure's pauses
    # (training/evaluate.py: speech widened by 2 frames, then 6 more, at 15 fps), since the retraction after a
    # phrase and the preparation before the next are gesture, not rest.
    pad = int(0.55 * fps)
    near_speech = np.convolve(speaking.astype(float), np.ones(2 * pad + 1), "same") > 0
    silent = ~near_speech
    assert silent.sum() >= fps // 2 and speaking.sum() > 4 * fps, "the example has both speech and pauses"
    ratio = speed[speaking].mean() / speed[silent].mean()
    print(f"\narm speed: {speed[speaking].mean():.4f} rad/frame in speech, {speed[silent].mean():.4f} in pauses "
          f"(ratio {ratio:.2f})")
    # the target is 2.5; the bundled model measured 16.5 on the AMD EPYC, so 11 leaves room for other CPUs' rounding
    assert ratio > 11.0, "the hands rest in pauses (the stage-1 model measured 3.9, stage 2 12.3, stage 3 16.5)"
