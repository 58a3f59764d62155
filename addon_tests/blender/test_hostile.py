"""Issue 29 in real Blender: headless and the panel never write over a file the user did not name for it, and no
input (a bone map, a path, a tampered take record) ends in a traceback. Every refusal asserts its message, that the
.blend is unchanged (`snapshot`) and that the watched folder keeps its bytes (no file replaced, no *.tmp left)."""
import json
import math
import os
from pathlib import Path

import bpy
import pytest

from addon_tests.blender.helpers import STEPS, snapshot
from addon_tests.crafted import device_node
from addon_tests.paths import TORCH_PYTHON

TORCH = ["--torch-python", str(TORCH_PYTHON)]


def contents(folder: Path) -> dict:
    """Every entry of a folder by name: a file's bytes, a link's target, or the kind of a special file."""
    return {p.name: (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else
                     "folder" if p.is_dir() else "special") for p in sorted(folder.iterdir())}


@pytest.fixture
def watched(tmp_path, speech_wav, scene):
    """A folder holding the run's audio, the saved .blend that is open, and an unrelated file."""
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "speech.wav").write_bytes(speech_wav.read_bytes())
    (folder / "notes.txt").write_text("keep me")
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "scene.blend"), copy=False)
    return folder


def headless(addon, capfd, *args: str) -> tuple[int, str]:
    capfd.readouterr()
    code = addon.headless.main(list(args))
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0", "--json", "{d}/speech.wav"], "--json would overwrite the input {d}/speech.wav"),
    (["--output", "{d}/speech.wav"], "--output would overwrite the input {d}/speech.wav"),
    (["--output", "{d}/scene.blend"], "--output would overwrite the input {d}/scene.blend"),
    (["--output", "{d}/notes.txt"], "--output {d}/notes.txt exists and is not a .blend file; refusing to overwrite"),
    (["--output", "{d}/full"], "--output path is a device or another special file (a FIFO, a socket); refusing"),
    (["--save-bone-map", "{d}/speech.wav"], "--save-bone-map would overwrite the input {d}/speech.wav"),
    (["--save-bone-map", "{d}/scene.blend", "--steps", "0"], "--save-bone-map would overwrite the input"),
    (["--save-bone-map", "{d}", "--steps", "0"], "--save-bone-map path is a folder; name a file in it"),
    (["--save-bone-map", "{d}/nope/m.json"], "--save-bone-map folder does not exist: {d}/nope"),
    (["--save-bone-map", "{d}/full"], "--save-bone-map path is a device or another special file"),
    (["--json", "{d}/o.json", "--output", "{d}/o.json"], "--output and --json name the same file"),
    (["--export", "/dev/null.fbx/x.fbx"], "the export folder does not exist"),
    (["--export", "{d}/" + "x" * 300 + ".fbx"], "the export cannot be written at"),
    (["--export", "{d}/link.fbx"], "the export {d}/link.fbx is a symbolic link; refusing to write through it"),
    (["--export", "{d}/notes.fbx"], "the export {d}/notes.fbx exists and is not a .fbx file Blender exported"),
], ids=["json-onto-audio", "output-onto-audio", "output-onto-open-blend", "output-onto-unrelated", "output-device",
        "bone-map-onto-audio", "bone-map-onto-open-blend", "bone-map-folder", "bone-map-missing-folder",
        "bone-map-device", "json-and-output-alike", "export-missing-folder", "export-name-too-long", "export-link",
        "export-onto-unrelated"])
def test_headless_writes_nothing_it_was_not_given(addon, scene, watched, capfd, flags, message):
    (watched / "notes.fbx").write_text("not an export")
    (watched / "link.fbx").symlink_to(watched / "notes.txt")
    device = device_node(watched)  # here "{d}/full" (as root), or /dev/full itself
    before, files = snapshot(), contents(watched)
    code, err = headless(addon, capfd, "generate", "--audio", str(watched / "speech.wav"), "--armature", "Rig",
                         "--steps", str(STEPS), *TORCH, *[f.format(d=watched).replace(f"{watched}/full", str(device))
                                                         for f in flags])
    assert code == 2 and f"diffgesture: error: {message.format(d=watched)}" in err, err
    assert snapshot() == before and contents(watched) == files and device.is_char_device()


@pytest.mark.parametrize("kind, message", [
    ("latin-1", "is not UTF-8 text"), ("nested", "nests too deeply to be read"), ("dev-zero", "is a device"),
    ("fifo", "is a FIFO (named pipe), not a file"), ("huge", "is larger than 1,024 KiB; it cannot be one"),
], ids=["not-utf8", "nested", "dev-zero", "fifo", "huge"])
def test_bad_bone_map_files_are_messages_in_headless_and_the_panel(addon, scene, tmp_path, capfd, kind, message):
    path = tmp_path / "map.json"
    if kind == "latin-1":
        path.write_bytes(b'{"format": "diffgesture-bone-map", "family": "caf\xe9"}')
    elif kind == "nested":
        path.write_text('{"format": "diffgesture-bone-map", "version": 1, "bones": ' + "[" * 100_000)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(300 << 20)
    before = snapshot()
    code, err = headless(addon, capfd, "generate", "--audio", str(tmp_path / "missing.wav"), "--armature", "Rig",
                         "--bone-map", str(path), *TORCH)
    assert code == 2 and "cannot use the bone map: the bone map" in err and message in err, err
    with pytest.raises(RuntimeError, match="Could not load the bone map: the bone map") as panel:
        bpy.ops.diffgesture.load_bone_map(filepath=str(path))
    assert message in str(panel.value) and snapshot() == before


def test_panel_bone_map_save_and_load(addon, scene, watched):
    """Save Bone Map refuses what is not a bone map; Load Bone Map finishes (it returned nothing before)."""
    files = contents(watched)
    for target in ("notes.txt", "scene.blend"):
        with pytest.raises(RuntimeError, match="Could not save the bone map: the bone map file"):
            bpy.ops.diffgesture.save_bone_map(filepath=str(watched / target))
    assert contents(watched) == files
    assert bpy.ops.diffgesture.save_bone_map(filepath=str(watched / "map.json")) == {"FINISHED"}
    assert bpy.ops.diffgesture.save_bone_map(filepath=str(watched / "map.json")) == {"FINISHED"}  # its own kind
    assert bpy.ops.diffgesture.load_bone_map(filepath=str(watched / "map.json")) == {"FINISHED"}
    assert sorted(p.name for p in watched.iterdir()) == ["map.json", "notes.txt", "scene.blend", "speech.wav"]


def test_an_export_that_fails_after_generating_is_a_message(addon, scene, speech_wav, tmp_path, capfd):
    code, err = headless(addon, capfd, "generate", "--audio", str(speech_wav), "--armature", "Rig", "--steps",
                         str(STEPS), *TORCH, "--no-sound", "--export", "/proc/take.fbx")
    assert code == 1 and "diffgesture: error: could not export to /proc/take.fbx" in err, err
    assert not Path("/proc/take.fbx").exists()


# -- take records --------------------------------------------------------------------------------------------------
TAMPERED = {
    "unknown-skeleton": ({"skeleton": "octopus"}, "'skeleton' is 'octopus', not one of ted_gesture, ted_expressive"),
    "start-frame-2^62": ({"start_frame": 2 ** 62}, "start_frame must be a whole frame within -1048574..1048574"),
    "scene-fps-negative": ({"scene_fps": -24}, "scene_fps must be a frame rate within 1..1000, not -24"),
    "settings-string": ({"settings": "fast"}, "settings must be a table, not 'fast'"),
    "unknown-field": ({"colour": 1}, "unknown field 'colour'"),
    "10M-poses": ("10M", "its poses have shape (1, 370370, 27)"),
    "nan-poses": ("nan", "its poses hold non-finite values (NaN or Inf)"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_take_is_refused_with_a_message_before_anything_is_sized(addon, scene, speech_wav, capfd, case):
    assert addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--no-sound",
                                "--steps", str(STEPS), *TORCH]) == 0
    action = bpy.data.objects["Rig"].animation_data.action
    record = action[addon.takes.KEY].to_dict()  # rebuilt whole: Blender crashes growing an array in place
    change, message = TAMPERED[case]
    if change == "10M":
        record["shape"], record["poses"] = [370370, 27], [0.0] * (370370 * 27)
    elif change == "nan":
        record["poses"][5] = math.nan
    else:
        record["fields"] = json.dumps({**json.loads(record["fields"]), **change})
    action[addon.takes.KEY] = record
    before = snapshot()
    for command in (["reroll", "--range", "3", "20", "--seed", "1", *TORCH], ["set-intensity", "--intensity", "2"]):
        code, err = headless(addon, capfd, command[0], "--armature", "Rig", *command[1:])
        assert code == 2 and f"the DiffGesture record of the action {action.name!r} is damaged" in err, err
        assert message in err and "generate it again" in err, err
    scene.diffgesture.reroll_start, scene.diffgesture.reroll_end = 3, 20
    with pytest.raises(RuntimeError, match="is damaged"):
        bpy.ops.diffgesture.reroll()
    with pytest.raises(RuntimeError, match="is damaged"):
        bpy.ops.diffgesture.set_intensity()
    assert snapshot() == before


def test_mutated_bone_maps_load_or_end_in_a_message(addon, scene, tmp_path):
    """Seeded mutations of a saved bone map (hostile values in its JSON, deep nesting, bytes that are not UTF-8, raw
    edits: addon_tests/fuzz.py) each load onto the rig or end in BoneMapFileError, never another exception; the
    rig's stored map is unchanged by the ones that fail."""
    import random
    from addon_tests.fuzz import mutate_text
    rig = scene.diffgesture.armature
    source = tmp_path / "map.json"
    addon.retarget.bone_maps.save_file(rig, source)
    rng, outcomes = random.Random(29), {"ok": 0, "refused": 0}
    for n in range(150):
        path = tmp_path / f"m{n}.json"
        path.write_bytes(mutate_text(source.read_text(), rng))
        try:
            addon.retarget.bone_maps.load_file(rig, path)
            outcomes["ok"] += 1
        except addon.retarget.presets.BoneMapFileError:
            outcomes["refused"] += 1
    print(f"\n150 bone-map mutations: {outcomes}")
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0
