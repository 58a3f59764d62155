"""The files other tools read. A take exported through Blender's FBX and glTF exporters starts at t = 0 (where its
speech starts) under the take's name, and the .glb passes the Khronos glTF validator; the add-on's and the CLI's BVH
read right in a third-party parser; the CLI's BVH stands upright, facing front, through Blender's BVH importer at its
default settings, and plays at its own speed with Scale FPS or Update Scene FPS ticked (as README says)."""
import importlib
import json
import os
import struct
import subprocess
from pathlib import Path

import bpy
import numpy as np
import pytest

from addon_tests.blender.helpers import MODULE, STEPS, action_keys
from addon_tests.checkers import read_bvh, validate_gltf
from addon_tests.paths import ROOT, TORCH_PYTHON


def glb_json(path: Path) -> dict:
    """The JSON chunk of a binary glTF file, read by the format's own layout (12-byte header, then the chunk)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data)
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert (magic, version, kind) == (b"glTF", 2, b"JSON")
    return json.loads(data[20:20 + length])


def key_frames(action: bpy.types.Action) -> list[float]:
    return [frame for _, _, keys in action_keys(action) for frame, _ in keys]


def test_take_exports_start_at_zero_under_the_takes_name(addon, scene, speech_wav, small_checkpoint, tmp_path):
    """A take that starts at frame 11, an older take on the NLA: the FBX re-imports as that one take with its first
    key on the new scene's first frame, the .glb has one animation named after the take whose times run from 0, and
    the validator finds no error in it; the add-on's BVH has every bone once at the scene's frame time."""
    demo = importlib.import_module(f"{MODULE}.demo_character").build_demo_character("Demo")  # skinned, for the glTF
    assert addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Demo", "--no-sound",
                                "--checkpoint", str(small_checkpoint), "--steps", str(STEPS), "--start-frame", "11",
                                "--torch-python", str(TORCH_PYTHON)]) == 0
    take, fps = demo.animation_data.action, scene.render.fps
    first, last = (round(f) for f in take.frame_range)
    assert first == 11 and min(key_frames(take)) == 11
    earlier = demo.animation_data.nla_tracks.new()  # an older take on the NLA: in no export, and left playing
    earlier.strips.new("earlier", 1, take.copy())
    for suffix in (".fbx", ".glb", ".bvh"):
        importlib.import_module(f"{MODULE}.export").export_take(bpy.context, demo, take, tmp_path / f"take{suffix}")
    assert list(demo.animation_data.nla_tracks) == [earlier] and not earlier.mute, "the NLA is as it was"

    gltf = glb_json(tmp_path / "take.glb")
    animation, = gltf["animations"]
    times = [gltf["accessors"][s["input"]] for s in animation["samplers"]]
    assert animation["name"] == take.name
    assert min(t["min"][0] for t in times) == 0 and max(t["max"][0] for t in times) == pytest.approx(
        (last - first) / fps, abs=1e-4)
    report = validate_gltf(tmp_path / "take.glb")
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]

    bvh = read_bvh(tmp_path / "take.bvh")
    assert sorted(bvh["names"]) == sorted(b.name for b in demo.data.bones)
    assert bvh["lookup"] == list(range(len(bvh["names"]))) and bvh["row_lengths"] == {bvh["channels"]}
    assert bvh["frames"] == bvh["rows"] == last - first + 1 and bvh["frame_time"] == pytest.approx(1 / fps, abs=1e-6)

    name = take.name
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(tmp_path / "take.fbx"))
    imported, = bpy.data.actions
    start = bpy.context.scene.frame_start
    assert (min(key_frames(imported)), max(key_frames(imported))) == (start, start + last - first)
    assert imported.name == f"Demo|{name}"[:63]


def test_cli_bvh_stands_upright_in_blenders_importer(empty_scene, speech_wav, tmp_path, capsys):
    """The CLI's BVH (the bundled model) at Blender's default import settings: one bone per joint, each name once, no
    zero-length joint, the nose above the hips and in front (-Y) of the neck; with Scale FPS in a 24 fps scene the
    15 fps take lasts as long as its speech; Update Scene FPS sets the scene to 15 fps."""
    path = tmp_path / "cli.bvh"
    subprocess.run([str(TORCH_PYTHON), "-m", "model_core", "generate", str(speech_wav), "-o", str(path), "--steps",
                    str(STEPS), "--seed", "1"], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    bvh = read_bvh(path)
    assert bvh["frame_time"] == pytest.approx(1 / 15, abs=1e-6)
    capsys.readouterr()
    assert bpy.ops.import_anim.bvh(filepath=str(path)) == {"FINISHED"}
    assert "zero length" not in capsys.readouterr().out
    rig = bpy.context.view_layer.objects.active
    names = sorted(b.name for b in rig.data.bones)
    assert names == sorted(bvh["names"]) == sorted(set(names)), "one bone per joint, each named once"
    first, last = (round(f) for f in rig.animation_data.action.frame_range)
    assert last - first + 1 == bvh["frames"]
    height, front = [], []
    for frame in range(first, last + 1):
        empty_scene.frame_set(frame)
        hips, neck, nose = (rig.matrix_world @ p for p in (rig.pose.bones["spine"].head,
                                                           rig.pose.bones["neck_nose"].head,
                                                           rig.pose.bones["neck_nose"].tail))
        height.append(nose.z - hips.z)
        front.append(neck.y - nose.y)
    assert min(height) > 0.3 and np.mean(front) > 0.03, (min(height), np.mean(front))

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = 24
    assert bpy.ops.import_anim.bvh(filepath=str(path), use_fps_scale=True) == {"FINISHED"}
    first, last = bpy.context.view_layer.objects.active.animation_data.action.frame_range
    assert last - first == pytest.approx((bvh["frames"] - 1) * 24 / 15, abs=1)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.import_anim.bvh(filepath=str(path), update_scene_fps=True) == {"FINISHED"}
    assert bpy.context.scene.render.fps / bpy.context.scene.render.fps_base == pytest.approx(15)
