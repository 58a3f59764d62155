"""Issue 7 in real Blender: odd audio, bad checkpoints, awkward rigs, a hung worker, undo, twice, save and reopen.

Every generation goes through the installed extension and a real torch worker (DIFFGESTURE_TORCH_PYTHON). Each
failure asserts its message and that nothing changed: the .blend by `snapshot`, files on disk by their bytes.
"""
import hashlib
import json
import os
from pathlib import Path

import bpy
import numpy as np
import pytest

from addon_tests.blender.helpers import (MODULE, STEPS, action_keys, draw_panel, drive_modal, keyframe_span,
                                         make_rig, snapshot)
from addon_tests.crafted import code_running_checkpoint, stalling_interpreter
from addon_tests.paths import FIXTURES, TORCH_PYTHON

FPS = 24  # the scene fixture's frame rate; motion starts at frame 11


def write_wav(path: Path, seconds: float, rate: int, channels: int, width: int, signal: str = "voice") -> Path:
    """A WAV written by hand (soundfile is not in Blender's env): 8/16/24-bit PCM or 32-bit float."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 160 * t) * (1 + np.sin(2 * np.pi * 3 * t)) if signal == "voice" else 0 * t
    x = np.repeat(x[:, None], channels, axis=1)
    if width == 4:
        data, fmt = x.astype("<f4").tobytes(), 3
    elif width == 1:
        data, fmt = np.round(128 + 127 * x).astype(np.uint8).tobytes(), 1
    else:
        ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype("<i4")
        data, fmt = ints.view(np.uint8).reshape(-1, 4)[:, :width].tobytes(), 1
    block = channels * width
    header = (b"fmt " + (16).to_bytes(4, "little") + fmt.to_bytes(2, "little") + channels.to_bytes(2, "little")
              + rate.to_bytes(4, "little") + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
              + (8 * width).to_bytes(2, "little"))
    body = b"WAVE" + header + b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    return path


def files_state(folder: Path) -> dict[str, str]:
    """Every file under a folder with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def messages(reports: list[tuple[str, str]], kind: str) -> str:
    return " | ".join(m for k, m in reports if k == kind)


# -- audio -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, rate, channels, width, signal", [
    (2.0, 16000, 1, 2, "silence"), (0.5, 16000, 1, 2, "voice"), (1.5, 8000, 1, 1, "voice"),
    (1.5, 96000, 6, 3, "voice"), (1.5, 44100, 2, 4, "voice")],
    ids=["silent", "half-second", "8bit-8kHz", "24bit-6ch-96kHz", "float-stereo-44.1kHz"])
def test_odd_audio_generates_over_the_whole_clip(addon, scene, tmp_path, seconds, rate, channels, width, signal):
    folder = tmp_path / "Sprache ünd Gesten 音声"  # a non-ASCII path with spaces, through Blender and the worker
    folder.mkdir()
    wav = write_wav(folder / "Grüße aus Köln.wav", seconds, rate, channels, width, signal)
    scene.diffgesture.audio_path = str(wav)
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    rig = scene.diffgesture.armature
    first, last = keyframe_span(rig)
    assert first == 11 and abs(last - (11 + seconds * FPS)) <= FPS / 15 + 1, (first, last)
    keys = action_keys(rig.animation_data.action)
    assert keys and all(np.isfinite(v) for _, _, points in keys for co in points for v in co)
    assert [s.frame_start for s in scene.sequence_editor.strips_all] == [11]


# -- checkpoints -------------------------------------------------------------------------------------------------
def _truncated(folder: Path) -> Path:
    path = folder / "truncated.bin"
    path.write_bytes((FIXTURES / "ted_small_checkpoint.bin").read_bytes()[:300_000])
    return path


def _random(folder: Path) -> Path:
    path = folder / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    return path


@pytest.mark.parametrize("make, code, message", [
    (lambda d: d / "absent.pt", 2, "checkpoint not found"),
    (_truncated, 1, "truncated.bin is not a PyTorch checkpoint"),
    (_random, 1, "random.pt is not a PyTorch checkpoint"),
    (lambda d: code_running_checkpoint(d / "evil.pt", d / "pwned"), 1,
     "refused to load: the checkpoint asks for 'posix.system'"),
], ids=["missing", "truncated", "not-a-checkpoint", "code-running-pickle"])
def test_bad_checkpoint_is_refused_through_headless(addon, scene, speech_wav, tmp_path, capsys, make, code, message):
    folder = tmp_path / "in"
    folder.mkdir()
    ckpt = make(folder)
    before, files = snapshot(), files_state(folder)
    out = tmp_path / "out.blend"
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--checkpoint", str(ckpt),
                              "--steps", str(STEPS), "--torch-python", str(TORCH_PYTHON), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == code and "diffgesture: error: " in err and message in err, err
    assert code == 2 or "Nothing was changed" in err
    assert snapshot() == before and files_state(folder) == files and not out.exists()
    assert not (folder / "pwned").exists(), "the crafted pickle must never run"


def headless_fingers(addon, scene, capsys) -> str:
    """Headless with fingers named explicitly (--parts): its stderr."""
    props = scene.diffgesture
    assert addon.headless.main(["generate", "--audio", props.audio_path, "--armature", props.armature.name,
                                "--checkpoint", props.checkpoint_path, "--steps", str(STEPS), "--no-sound",
                                "--torch-python", str(TORCH_PYTHON), "--parts", "spine,arms,fingers"]) == 0
    return capsys.readouterr().err


def test_expressive_checkpoint_on_a_rig_without_fingers_drives_the_rest(addon, scene, expressive_checkpoint,
                                                                        capsys):
    props = scene.diffgesture
    props.armature = make_rig("Handless", addon, fingers=False)
    props.checkpoint_path = str(expressive_checkpoint)
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    assert not any("finger" in m for _, m in reports), reports  # Fingers (on by default) means: where possible
    keyed = {path for path, _, _ in action_keys(props.armature.animation_data.action)}
    assert any("LeftForeArm" in p for p in keyed) and any("Head" in p for p in keyed)
    assert "fingers were skipped: 'Handless' has no finger bones mapped" in headless_fingers(addon, scene, capsys)


def test_ted_checkpoint_warns_of_fingers_only_when_asked_and_the_panel_greys_them(addon, scene, capsys, tmp_path):
    props = scene.diffgesture
    fresh = tmp_path / "fresh.pt"  # a checkpoint no generation of this session has used yet
    fresh.write_bytes(Path(props.checkpoint_path).read_bytes())
    props.checkpoint_path = str(fresh)
    assert "Fingers" in draw_panel(addon)  # not known yet
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    assert not any("finger" in m for _, m in reports), reports  # the default run: no warning
    assert "Fingers (none in this checkpoint)" in draw_panel(addon)
    keyed = {path for path, _, _ in action_keys(scene.diffgesture.armature.animation_data.action)}
    assert keyed and not any("Index" in p or "Thumb" in p for p in keyed)
    assert "fingers were not driven: the ted_gesture skeleton has no fingers" in headless_fingers(addon, scene,
                                                                                                  capsys)

    props = scene.diffgesture
    props.drive_spine = props.drive_arms = False  # fingers only: nothing this skeleton can drive
    before = snapshot()
    result, reports = drive_modal(addon)
    error = messages(reports, "ERROR")
    assert result == {"CANCELLED"} and "nothing to drive" in error and "Nothing was changed" in error, reports
    assert snapshot() == before


# -- rigs --------------------------------------------------------------------------------------------------------
def _armless(addon) -> bpy.types.Object:
    """A mixamo rig whose forearms were deleted (the hands hang from the upper arms)."""
    rig = make_rig("Partial", addon, fingers=False)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for side in ("Left", "Right"):
        rig.data.edit_bones.remove(rig.data.edit_bones[f"mixamorig:{side}ForeArm"])
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def test_partial_rig_lists_what_is_unmapped_and_generates_only_when_allowed(addon, scene, speech_wav, capsys):
    props = scene.diffgesture
    props.armature = _armless(addon)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"^Error: the bones of 'Partial' cannot be driven: no bone is mapped for "
                                           r"the required roles left_forearm, right_forearm\. Map them in the panel's "
                                           r"Bones box, or allow a partial rig to animate only the mapped bones\n$"):
        bpy.ops.diffgesture.generate()
    args = ["generate", "--audio", str(speech_wav), "--armature", "Partial", "--steps", str(STEPS),
            "--checkpoint", props.checkpoint_path, "--torch-python", str(TORCH_PYTHON), "--no-sound"]
    assert addon.headless.main(args) == 2 and "required roles left_forearm, right_forearm" in capsys.readouterr().err
    assert snapshot() == before

    props.allow_partial = True
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    assert "partial rig: not driven (no bone mapped): left_forearm, right_forearm" in messages(reports, "WARNING")
    keyed = {path for path, _, _ in action_keys(props.armature.animation_data.action)}
    assert {"mixamorig:LeftArm", "mixamorig:RightArm", "mixamorig:Head"} <= {p.split('"')[1] for p in keyed}

    assert addon.headless.main([*args, "--allow-partial"]) == 0
    assert "warning: speech.wav: partial rig: not driven" in capsys.readouterr().err


def test_rig_with_nothing_mappable_is_refused_even_when_partial_is_allowed(addon, scene):
    props = scene.diffgesture
    props.armature, props.allow_partial = make_rig("Prop", addon, family=None), True
    before = snapshot()
    with pytest.raises(RuntimeError, match="no bone is mapped to any role"):
        bpy.ops.diffgesture.generate()
    assert snapshot() == before


def test_non_uniform_scale_keys_the_same_motion_and_warns(addon, scene):
    rig = scene.diffgesture.armature
    assert drive_modal(addon)[0] == {"FINISHED"}
    uniform = action_keys(rig.animation_data.action)
    rig.scale = (1.0, 2.0, 1.0)
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    assert "'Rig' has non-uniform scale (1, 2, 1)" in messages(reports, "WARNING")
    scaled = action_keys(rig.animation_data.action)  # the motion is keyed in the rig's own space
    assert [k[:2] for k in scaled] == [k[:2] for k in uniform]
    assert np.allclose([k[2] for k in scaled], [k[2] for k in uniform], atol=1e-6)


def test_constraints_on_driven_bones_are_kept_and_named(addon, scene):
    rig = scene.diffgesture.armature
    target = bpy.data.objects.new("Target", None)
    scene.collection.objects.link(target)
    ik = rig.pose.bones["mixamorig:LeftForeArm"].constraints.new("IK")
    ik.target, ik.chain_count = target, 2
    copy = rig.pose.bones["mixamorig:RightForeArm"].constraints.new("COPY_ROTATION")
    copy.target, copy.influence = target, 0.5
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    warning = messages(reports, "WARNING")
    assert "constraints on these driven bones were kept" in warning
    assert "mixamorig:LeftForeArm (IK)" in warning and "mixamorig:RightForeArm (Copy Rotation)" in warning
    left, right = (rig.pose.bones[f"mixamorig:{s}ForeArm"].constraints for s in ("Left", "Right"))
    assert [(c.type, c.target, c.chain_count) for c in left] == [("IK", target, 2)]
    assert [(c.type, c.target, c.influence) for c in right] == [("COPY_ROTATION", target, 0.5)]
    keyed = {path for path, _, _ in action_keys(rig.animation_data.action)}
    assert any("LeftForeArm" in p for p in keyed)


def test_linked_armature_is_refused_with_make_local_advice(addon, scene, speech_wav, tmp_path, capsys):
    lib_rig = make_rig("LibRig", addon)
    library = tmp_path / "library.blend"
    bpy.data.libraries.write(str(library), {lib_rig})
    data = lib_rig.data
    bpy.data.objects.remove(lib_rig)
    bpy.data.armatures.remove(data)
    with bpy.data.libraries.load(str(library), link=True) as (_, linked):
        linked.objects = ["LibRig"]
    obj = linked.objects[0]
    scene.collection.objects.link(obj)
    assert obj.library is not None
    scene.diffgesture.armature = obj
    before, files = snapshot(), files_state(tmp_path)
    with pytest.raises(RuntimeError, match=r"'LibRig' is linked from the library .*library\.blend and cannot be "
                                           r"animated here: make it local .* or add a library override"):
        bpy.ops.diffgesture.generate()
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "LibRig",
                              "--torch-python", str(TORCH_PYTHON)])
    assert rc == 2 and "make it local" in capsys.readouterr().err
    assert snapshot() == before and files_state(tmp_path) == files


# -- worker and environment --------------------------------------------------------------------------------------
def test_worker_hanging_mid_generation_is_stopped_and_nothing_changes(addon, scene, tmp_path):
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.torch_python = str(stalling_interpreter(tmp_path, TORCH_PYTHON))
    scene.diffgesture.steps = 400
    before = snapshot()
    try:
        addon.session.SESSION.worker.client(prefs.torch_python).stall_timeout = 2.0
        result, reports = drive_modal(addon, timeout=60)
    finally:
        prefs.torch_python = str(TORCH_PYTHON)
        addon.session.SESSION.worker.shutdown()
    error = messages(reports, "ERROR")
    assert result == {"CANCELLED"} and "the worker sent nothing for 2 s and was stopped as hung" in error, reports
    assert "Nothing was changed; the worker will be restarted" in error
    assert snapshot() == before


def test_cuda_without_a_gpu_falls_back_and_the_summary_says_so(addon, scene, speech_wav, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # "no GPU" even on a machine with one
    addon.session.SESSION.worker.shutdown()  # the next worker starts with that environment
    summary = tmp_path / "summary.json"
    try:
        rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--device", "cuda",
                                  "--checkpoint", scene.diffgesture.checkpoint_path, "--steps", str(STEPS),
                                  "--torch-python", str(TORCH_PYTHON), "--json", str(summary)])
    finally:
        addon.session.SESSION.worker.shutdown()
    result = json.loads(summary.read_text())["results"][0]
    assert rc == 0 and result["device"] == "cpu"
    assert any("CUDA was requested but is not available" in n for n in result["notes"])
    assert "warning: speech.wav: CUDA was requested but is not available" in capsys.readouterr().err


# -- Blender -----------------------------------------------------------------------------------------------------
def test_undo_after_a_generation_restores_the_file_in_one_step(addon, scene):
    """Undo needs a window: the background wheel has one, and ('EXEC_DEFAULT', True) pushes undo as the UI does."""
    assert "UNDO" in addon.operators.generate.DIFFGESTURE_OT_generate.bl_options
    window = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=window):
        bpy.ops.ed.undo_push(message="before generating")
        before = snapshot()
        assert not bpy.ops.ed.undo.poll(), "nothing to undo yet"
        assert bpy.ops.diffgesture.generate("EXEC_DEFAULT", True) == {"FINISHED"}
        after = snapshot()
        assert after != before
        bpy.ops.ed.undo()
        assert snapshot() == before
        bpy.ops.ed.redo()  # the generation was one undo step of its own: redo brings all of it back
        assert snapshot() == after


def test_generating_twice_keeps_the_first_action_unchanged(addon, scene, speech_wav):
    rig = scene.diffgesture.armature
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    first = rig.animation_data.action
    first_keys = action_keys(first)
    scene.diffgesture.seed = 7
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    second = rig.animation_data.action
    assert [a.name for a in bpy.data.actions] == [speech_wav.stem, f"{speech_wav.stem}.001"]
    assert second != first and first.use_fake_user, "the first action survives saving while unassigned"
    assert action_keys(first) == first_keys and action_keys(second) != first_keys


def test_save_and_reopen_after_a_panel_generation(addon, scene, tmp_path):
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    expected = snapshot()
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    assert snapshot() == expected
    props = bpy.context.scene.diffgesture
    assert props.armature.name == "Rig" and props.steps == STEPS and props.start_frame == 11
    assert os.path.samefile(bpy.path.abspath(bpy.context.scene.sequence_editor.strips_all[0].sound.filepath),
                            props.audio_path)


# -- issue 13: a failed generation changes nothing; headless always ends with JSON and an exit code --------------
def fill_channels(scene, start: int, end: int) -> None:
    """Colour strips on all 128 sequencer channels over [start, end]."""
    seq = scene.sequence_editor_create()
    span = {"length": end - start} if bpy.app.version >= (5, 0, 0) else {"frame_end": end}  # 5.0 renamed it
    for channel in range(1, 129):
        seq.strips.new_effect(f"busy{channel}", "COLOR", channel, start, **span)


def test_all_sequencer_channels_busy_generates_without_a_strip_and_says_so(addon, scene):
    fill_channels(scene, 1, 500)
    before = snapshot()["strips"]
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    assert ("the sound strip was not added: all 128 sequencer channels are busy over frames 11-"
            in messages(reports, "WARNING"))
    assert snapshot()["strips"] == before and scene.diffgesture.armature.animation_data.action is not None


def _failing_on_second_variation(addon, monkeypatch):
    """apply_motion as it is, except that the second call (the second variation) raises mid-way: after the first
    variation's action was created and assigned, with an exception type nothing expects."""
    real, calls = addon.retarget.apply_motion, []

    def apply(*args, **kw):
        calls.append(kw["action_name"])
        if len(calls) == 2:
            raise RuntimeError("simulated failure while keying")
        return real(*args, **kw)
    monkeypatch.setattr(addon.retarget, "apply_motion", apply)
    return calls


def test_a_failure_while_writing_the_result_undoes_everything(addon, scene, monkeypatch):
    rig = scene.diffgesture.armature
    old = bpy.data.actions.new("Hand-made")  # the user's own action stays assigned and keeps its fake-user flag
    rig.animation_data_create().action = old
    scene.diffgesture.variations = 2
    calls = _failing_on_second_variation(addon, monkeypatch)
    before = snapshot()
    result, reports = drive_modal(addon)
    assert result == {"CANCELLED"} and len(calls) == 2
    error = messages(reports, "ERROR")
    assert "Could not apply the motion: simulated failure while keying. Nothing was changed" in error, reports
    assert snapshot() == before and rig.animation_data.action == old and not old.use_fake_user
    assert scene.diffgesture.add_sound and not bpy.data.sounds, "the removed strip's sound went with it"


def test_headless_ends_with_json_and_exit_code_when_writing_fails(addon, scene, speech_wav, tmp_path, capsys,
                                                                 monkeypatch):
    _failing_on_second_variation(addon, monkeypatch)
    before = snapshot()
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--variations", "2",
                              "--steps", str(STEPS), "--torch-python", str(TORCH_PYTHON),
                              "--json", str(tmp_path / "s.json"), "--output", str(tmp_path / "o.blend")])
    out = capsys.readouterr()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert rc == 1 and summary["exit_code"] == 1 and summary["ok"] is False and not summary["results"]
    assert "simulated failure while keying. Nothing was changed" in summary["errors"][0]["error"]
    assert json.loads(out.out) == summary and "Traceback" not in out.err
    assert snapshot() == before and not (tmp_path / "o.blend").exists()


@pytest.mark.parametrize("flag, name, message", [
    ("--output", "missing/o.blend", "--output folder does not exist: {d}/missing"),
    ("--json", "missing/s.json", "--json folder does not exist: {d}/missing"),
    ("--output", ".", "--output path is a folder; name a file in it: {d}"),
], ids=["output-missing-folder", "json-missing-folder", "output-folder"])
def test_headless_output_paths_are_checked_before_generating(addon, scene, speech_wav, tmp_path, capsys, flag, name,
                                                             message):
    before = snapshot()
    target = os.path.normpath(tmp_path / name)
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--steps", str(STEPS),
                              "--torch-python", str(TORCH_PYTHON), flag, target])
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert rc == 2 and summary["exit_code"] == 2 and summary["results"] == []
    assert f"diffgesture: error: {message.format(d=tmp_path)}" in out.err, out.err
    assert snapshot() == before


def test_a_scene_frame_rate_out_of_range_is_refused_and_nothing_changes(addon, scene):
    scene.render.fps, scene.render.fps_base = 1000, 0.01  # 100,000 fps: millions of keys for a few seconds
    before = snapshot()
    result, reports = drive_modal(addon)
    error = messages(reports, "ERROR")
    assert result == {"CANCELLED"} and "the scene's frame rate is 100000 fps; set it within 1-1000 fps" in error
    assert "Nothing was changed" in error and snapshot() == before
