"""Bone maps: name parsing, auto-detection on every family and on renamed or unknown rigs, stored maps and files."""
import bpy
import numpy as np
import pytest

from addon_tests.blender import rigs
from diffgesture_blender import rigs as demo
from diffgesture_blender.retarget import bone_maps, presets, quat
from diffgesture_blender.retarget.names import mirror_name, parse
from diffgesture_blender.retarget.roles import REQUIRED_ROLES


@pytest.mark.parametrize("name, key", [
    ("mixamorig:LeftForeArm", ("", "L", "forearm")), ("mixamorig1:RightHandIndex2", ("", "R", "handindex2")),
    ("upper_arm_fk.L", ("", "L", "upperarmfk")), ("lowerarm_r", ("", "R", "lowerarm")),
    ("J_Bip_L_UpperArm", ("", "L", "jbipupperarm")),
    ("leftUpperArm", ("", "L", "upperarm")), ("Left_Upper_Arm", ("", "L", "upperarm")),
    ("spine.003", ("", "", "spine003")), ("f_index.01.R", ("", "R", "findex01")), ("Head", ("", "", "head")),
    ("ORG-upper_arm.L", ("ORG", "L", "upperarm")), ("DEF-spine.006", ("DEF", "", "spine006")),
    ("MCH-hand_fk.R", ("MCH", "R", "handfk")),
])
def test_parse(name, key):
    assert parse(name) == key


def test_mirror_name():
    assert [mirror_name(n) for n in ("LeftArm", "hand.L", "clavicle_l", "J_Bip_L_Hand", "neck_01", "DEF-hand.L")] == [
        "RightArm", "hand.R", "clavicle_r", "J_Bip_R_Hand", "neck_01", "DEF-hand.R"]


@pytest.mark.parametrize("options", [{}, {"fingers": False}, {"a_pose": True, "y_up_cm": True}])
@pytest.mark.parametrize("family", list(rigs.FAMILIES))
def test_detects_every_family(empty_scene, family, options):
    obj = rigs.build_family(family, **options)
    det = bone_maps.detect(obj)
    assert det.preset == family and det.missing_required == []
    assert det.total == len(presets.role_keys(*presets.presets()[family]))
    assert det.covered == len(det.mapping) == det.total - (0 if options.get("fingers", True) else 30)
    assert bone_maps.validate(obj, det.mapping) == []
    for role, bone in det.mapping.items():  # mirror-safety: left roles on left-named bones at +X
        if role.startswith(("left_", "right_")):
            side = "L" if role.startswith("left_") else "R"
            assert parse(bone).side == side
            assert ((obj.matrix_world @ obj.data.bones[bone].head_local).x > 0) == (side == "L")
    assert str(det.covered) in det.message


def test_detects_renamed_rig(empty_scene):
    """A UE4 rig renamed to Blender-style sides and capitals, a Mixamo rig with another namespace prefix."""
    ue = rigs.build_family("ue4")
    for b in ue.data.bones:
        if b.name.endswith(("_l", "_r")):
            b.name = b.name[:-2].title() + "." + b.name[-1].upper()
    det = bone_maps.detect(ue)
    assert det.preset == "ue4" and det.covered == det.total and det.mapping["left_forearm"] == "Lowerarm.L"
    mixamo = rigs.build_family("mixamo")
    for b in mixamo.data.bones:
        b.name = b.name.replace("mixamorig:", "mixamorig7:")
    det = bone_maps.detect(mixamo)
    assert det.preset == "mixamo" and det.covered == det.total


def test_unknown_rig_lists_missing_bones(empty_scene):
    """A tentacle (one chain of bones) has neither known names nor a humanoid shape."""
    obj = rigs.build([(f"Bone{i:03d}", f"Bone{i - 1:03d}" if i else None, f"spine{i}", f"spine{i + 1}") for i in range(8)],
                     "Tentacle", spine=8)
    det = bone_maps.detect(obj)
    assert det.preset is None and det.mapping == {} and det.missing_required == REQUIRED_ROLES
    assert all(r in det.message for r in REQUIRED_ROLES)
    assert all(f"missing required bone for {r}" in bone_maps.validate(obj, {}) for r in REQUIRED_ROLES)


def test_partial_rig_and_hierarchy_checks(empty_scene):
    obj = rigs.build_family("mixamo", fingers=False)
    bpy.ops.object.mode_set(mode="EDIT")
    edit = obj.data.edit_bones
    edit["mixamorig:LeftForeArm"].use_connect = False
    edit["mixamorig:LeftForeArm"].parent = edit["mixamorig:Hips"]
    edit.remove(edit["mixamorig:Neck"])
    bpy.ops.object.mode_set(mode="OBJECT")
    det = bone_maps.detect(obj)
    assert det.preset == "mixamo" and det.missing_required == ["neck", "left_forearm"]
    assert "neck" in det.message and "left_forearm" in det.message
    problems = bone_maps.validate(obj, {**det.mapping, "neck": "nope", "left_forearm": "mixamorig:LeftForeArm",
                                        "tail": "mixamorig:Hips"})
    assert any("no bone named 'nope'" in p for p in problems)
    assert any("unknown role 'tail'" in p for p in problems)
    assert any("left_forearm" in p and "not below" in p for p in problems)


def test_bone_map_is_saved_with_the_blend(empty_scene, tmp_path):
    obj = rigs.build_family("vrm", "Avatar")
    assert bone_maps.get_bone_map(obj) == {}
    mapping = {**bone_maps.detect(obj).mapping, "left_thumb1": ""}
    bone_maps.set_bone_map(obj, mapping)
    path = str(tmp_path / "map.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    stored = bone_maps.get_bone_map(bpy.data.objects["Avatar"])
    assert stored == {r: b for r, b in mapping.items() if b} and "left_thumb1" not in stored


def test_demo_character_is_a_skinned_detectable_figure(empty_scene):
    rig = demo.build_demo_character()
    body = next(o for o in bpy.data.objects if o.parent == rig)
    assert body.type == "MESH" and body.modifiers["Armature"].object == rig
    assert {g.name for g in body.vertex_groups} == {b.name for b in rig.data.bones}
    assert len(body.data.vertices) > 1000
    for v in body.data.vertices:  # each vertex is skinned to the bone it was built around
        (group,) = v.groups
        bone = rig.data.bones[body.vertex_groups[group.group].name]
        assert group.weight == 1.0 and (v.co - (bone.head_local + bone.tail_local) / 2).length < 0.25
    det = bone_maps.detect(rig)
    assert det.preset == "mixamo" and det.covered == det.total
    xs = np.array([v.co.x for v in body.data.vertices])
    assert xs.max() > 0.5 and xs.min() < -0.5  # arms out to both sides


def test_slerp_resample_keeps_source_frames_and_unit_length():
    rng = np.random.default_rng(1)
    dirs = rng.normal(size=(7, 4, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    out = quat.slerp_resample(dirs, 15, 24)
    assert out.shape == (10, 4, 3)
    assert np.allclose(out[::8], dirs[::5]) and np.allclose(np.linalg.norm(out, axis=-1), 1)
    mid = quat.slerp_resample(dirs[:2], 15, 30)[1]  # halfway: equal angles to both ends
    assert np.allclose(np.sum(mid * dirs[0], -1), np.sum(mid * dirs[1], -1))


def test_drivers_on_driven_channels_are_named_like_constraints(empty_scene):
    from diffgesture_blender import retarget
    obj = rigs.build_family("mixamo", "Driven")
    fcurve = obj.pose.bones["mixamorig:LeftForeArm"].driver_add("rotation_quaternion", 1)
    fcurve.driver.expression = "0.3"
    obj.pose.bones["mixamorig:LeftUpLeg"].driver_add("rotation_quaternion", 1)  # not a driven bone: not named
    mapping = bone_maps.detect(obj).mapping
    notes = retarget.rig_notes(obj, mapping, "ted_gesture", {"spine", "arms"})
    assert any(n.startswith("drivers on the rotation of these driven bones") and "mixamorig:LeftForeArm" in n
               and "UpLeg" not in n for n in notes), notes


def test_bone_map_file_round_trip_fits_another_character_of_the_family(empty_scene, tmp_path):
    first = rigs.build_family("mixamo", "First")
    path = tmp_path / "mixamo.json"
    bone_maps.save_file(first, path)
    other = rigs.build_family("mixamo", "Other")
    for b in other.data.bones:
        b.name = b.name.replace("mixamorig:", "mixamorig1:")
    mapping = bone_maps.load_file(other, path)
    assert mapping == {r: b.replace("mixamorig:", "mixamorig1:") for r, b in bone_maps.detect(first).mapping.items()}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bone_maps.load_file(other, path)
