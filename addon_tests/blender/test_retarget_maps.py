"""Bone maps: name parsing, auto-detection on every family and on renamed or unknown rigs, stored maps and files."""
import bpy
import numpy as np
import pytest

from addon_tests.blender import rig_families as rigs
from diffgesture_blender import demo_character as demo
from diffgesture_blender.retarget import bone_maps, presets, quat
from diffgesture_blender.retarget.names import mirror_name, parse
from diffgesture_blender.retarget.roles import FINGERS, REQUIRED_ROLES


@pytest.mark.parametrize("name, key", [
    ("mixamorig:LeftForeArm", ("", "L", "forearm")), ("mixamorig1:RightHandIndex2", ("", "R", "handindex2")),
    ("upper_arm_fk.L", ("", "L", "upperarmfk")), ("lowerarm_r", ("", "R", "lowerarm")),
    ("J_Bip_L_UpperArm", ("", "L", "jbipupperarm")),
    ("leftUpperArm", ("", "L", "upperarm")), ("Left_Upper_Arm", ("", "L", "upperarm")),
    ("spine.003", ("", "", "spine003")), ("f_index.01.R", ("", "R", "findex01")), ("Head", ("", "", "head")),
    ("ORG-upper_arm.L", ("ORG", "L", "upperarm")), ("DEF-spine.006", ("", "", "spine006")),
    ("MCH-hand_fk.R", ("MCH", "R", "handfk")),
    # rig prefixes dropped: Maya HumanIK, 3ds Max Biped, Valve, Character Creator, a Rigify deform-only export
    ("Character1_LeftForeArm", ("", "L", "forearm")), ("Bip01 L UpperArm", ("", "L", "upperarm")),
    ("Bip001 R Forearm", ("", "R", "forearm")), ("ValveBiped.Bip01_L_Hand", ("", "L", "hand")),
    ("CC_Base_L_Upperarm", ("", "L", "upperarm")), ("DEF-upper_arm.R", ("", "R", "upperarm")),
])
def test_parse(name, key):
    assert parse(name) == key


def test_a_prefix_every_bone_shares_is_dropped(empty_scene):
    """A rig whose every bone carries its character's name ('Hero_LeftArm', 'Hero_Hips' ...) matches by the rest."""
    obj = rigs.build([(f"Hero_{b}", p and f"Hero_{p}", h, t) for b, p, h, t in rigs.mixamo(fingers=False)], "Hero")
    det = bone_maps.detect(obj)
    assert det.preset == "mixamo" and det.mapping["left_upper_arm"] == "Hero_LeftArm" and det.covered == 14


def test_mirror_name():
    assert [mirror_name(n) for n in ("LeftArm", "hand.L", "clavicle_l", "J_Bip_L_Hand", "neck_01", "DEF-hand.L")] == [
        "RightArm", "hand.R", "clavicle_r", "J_Bip_R_Hand", "neck_01", "DEF-hand.R"]


@pytest.mark.parametrize("options", [{}, {"fingers": False}, {"a_pose": True, "y_up_cm": True}])
@pytest.mark.parametrize("family", list(rigs.FAMILIES))
def test_detects_every_family(empty_scene, family, options):
    obj = rigs.build_family(family, **options)
    det = bone_maps.detect(obj)
    assert det.preset == rigs.preset_of(family) and det.missing_required == [], det.message
    assert det.total == len(presets.role_keys(*presets.presets()[det.preset]))
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
    assert det.preset == "mixamo" and det.missing_required == ["left_forearm"] and "neck" not in det.mapping
    assert "left_forearm" in det.message and "neck" not in det.message  # a missing neck is folded, not required
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


def _renamed(obj, names: dict[str, str]):
    """The rig with bones renamed (old -> new, through temporary names so that names may swap); returns a function
    old name -> new name."""
    for k, old in enumerate(names):
        obj.data.bones[old].name = f"tmp{k}"
    for k, new in enumerate(names.values()):
        obj.data.bones[f"tmp{k}"].name = new
    return lambda name: names.get(name, name)


@pytest.mark.parametrize("family", ["mixamo", "ue5", "cc", "daz8", "daz9", "mpfb"])
def test_fingers_found_by_structure_on_an_anonymous_rig(empty_scene, family):
    """Every bone renamed Bone000, Bone001 ...: the five finger chains of each hand come from the hierarchy and the
    rest geometry (metacarpals and carpals skipped, the thumb told apart, index to little across the hand), and they
    are the bones the family's names say."""
    obj = rigs.build_family(family, "anon", a_pose=family == "mpfb")
    named = bone_maps.detect(obj).mapping
    assert all(f"{s}_{f}{i}" in named for s in ("left", "right") for f in FINGERS for i in (1, 2, 3))
    new = _renamed(obj, {b.name: f"Bone{i:03d}" for i, b in enumerate(obj.data.bones)})
    det = bone_maps.detect(obj)
    assert det.preset == "structure" and not det.missing_required, det.message
    for role, bone in named.items():  # MakeHuman has clavicle > shoulder01 > upperarm01: either is a clavicle
        if role.startswith(("left_", "right_")) and not role.endswith("clavicle"):
            assert det.mapping.get(role) == new(bone), (role, bone)


def test_misleading_finger_names_are_vetoed_by_the_structure(empty_scene):
    """A Mixamo rig whose left index and middle fingers and left thumb and little finger carry each other's names:
    names alone would swap them; the structure puts every finger back and the message names what was not used."""
    obj = rigs.build_family("mixamo", "swapped")
    truth = bone_maps.detect(obj).mapping
    swap = {"Index": "Middle", "Middle": "Index", "Thumb": "Pinky", "Pinky": "Thumb"}
    new = _renamed(obj, {b.name: b.name.replace(f"LeftHand{a}", f"LeftHand{b_}") for b in obj.data.bones
                         for a, b_ in swap.items() if f"LeftHand{a}" in b.name})
    det = bone_maps.detect(obj)
    assert det.preset == "mixamo" and det.covered == det.total, det.message
    for role, bone in truth.items():
        assert det.mapping[role] == new(bone), role
    assert "left_index1: mixamorig:LeftHandIndex1 is the middle1 by its place in the rig" in det.vetoed, det.vetoed
    assert "left_thumb2: mixamorig:LeftHandThumb2 is the pinky2 by its place in the rig" in det.vetoed
    assert not any(v.startswith("right_") for v in det.vetoed) and "not used" in det.message


def _vrm_rig(version: int):
    """A VRoid rig whose bones are renamed to names no preset knows, carrying the VRM add-on's humanoid table as ID
    properties (the add-on not installed): VRM 0.x as a list of {bone, node: {bone_uuid}}, VRM 1.0 as one entry per
    human bone; each bone carries its uuid. Returns the rig and the role -> bone map the table says."""
    obj = rigs.build_family("vrm", f"vrm{version}")
    names = bone_maps.detect(obj).mapping
    roles = {"hips": "hips", "spine": "spine", "spine1": "chest", "spine2": "upperChest", "neck": "neck", "head": "head"}
    for side in ("left", "right"):
        roles.update({f"{side}_clavicle": f"{side}Shoulder", f"{side}_upper_arm": f"{side}UpperArm",
                      f"{side}_forearm": f"{side}LowerArm", f"{side}_hand": f"{side}Hand"})
        for ours, theirs in zip(FINGERS, ("Thumb", "Index", "Middle", "Ring", "Little")):
            joints = ("Metacarpal", "Proximal", "Distal") if version == 1 and ours == "thumb" else (
                "Proximal", "Intermediate", "Distal")
            roles.update({f"{side}_{ours}{i}": f"{side}{theirs}{j}" for i, j in enumerate(joints, start=1)})
    new = _renamed(obj, {b.name: f"Joint {i} of avatar" for i, b in enumerate(obj.data.bones)})
    uuids = {}
    for i, bone in enumerate(obj.data.bones):
        uuids[bone.name] = f"{i:032x}"
        bone["vrm_addon_extension"] = {"uuid": uuids[bone.name]}
    if version == 0:
        table = {"vrm0": {"humanoid": {"human_bones": [{"bone": vrm, "node": {"bone_uuid": uuids[new(names[r])]}}
                                                        for r, vrm in roles.items()]}}}
    else:
        snake = {r: "".join("_" + c.lower() if c.isupper() else c for c in vrm) for r, vrm in roles.items()}
        table = {"vrm1": {"humanoid": {"human_bones": {snake[r]: {"node": {"bone_uuid": uuids[new(names[r])]}}
                                                       for r in roles}}}}
    obj.data["vrm_addon_extension"] = table
    return obj, {r: new(names[r]) for r in roles}


@pytest.mark.parametrize("version", [0, 1])
def test_vrm_humanoid_table_is_read_and_preferred(empty_scene, version):
    obj, table = _vrm_rig(version)
    det = bone_maps.detect(obj)
    assert det.preset == "vrm" and det.declared and "VRM humanoid table" in det.message, det.message
    assert det.mapping == table and not det.missing_required and not det.vetoed
    del obj.data["vrm_addon_extension"]  # without the table only the structure is left (no fingers named)
    assert bone_maps.detect(obj).preset == "structure"


def test_detection_is_kept_until_the_rig_changes(empty_scene):
    """The panel asks for the detection on every redraw; it is kept per object, and renaming, re-parenting or moving
    bones, or turning the object, detects again. Callers get their own copy."""
    obj = rigs.build_family("mixamo", "Kept", fingers=False)
    first = bone_maps.detect(obj)
    first.mapping.clear()
    assert bone_maps.detect(obj).mapping["left_forearm"] == "mixamorig:LeftForeArm"
    obj.data.bones["mixamorig:LeftForeArm"].name = "mixamorig:LeftLowerArm"
    assert bone_maps.detect(obj).mapping["left_forearm"] == "mixamorig:LeftLowerArm"  # found by its place
    key = bone_maps.rig_key(obj)
    obj.rotation_euler = (0.0, 0.0, 3.14159)  # the structure is read in the world
    assert bone_maps.rig_key(obj) != key
    bpy.ops.object.mode_set(mode="EDIT")
    edit = obj.data.edit_bones
    edit["mixamorig:LeftLowerArm"].use_connect = False
    edit["mixamorig:LeftLowerArm"].parent = edit["mixamorig:Hips"]
    bpy.ops.object.mode_set(mode="OBJECT")
    assert "left_forearm" in bone_maps.detect(obj).missing_required


@pytest.fixture
def vrm_properties_registered():
    """Property groups laid out as the VRM add-on registers them (the armature's VRM 0.x humanoid table, each bone's
    uuid), for the case where the add-on is installed: Blender 5.0 then keeps their data apart from ID properties."""
    from bpy.props import CollectionProperty, PointerProperty, StringProperty

    node = type("DGTestVrmNode", (bpy.types.PropertyGroup,), {"__annotations__": {"bone_uuid": StringProperty()}})
    human_bone = type("DGTestVrmHumanBone", (bpy.types.PropertyGroup,), {"__annotations__": {
        "bone": StringProperty(), "node": PointerProperty(type=node)}})
    humanoid = type("DGTestVrmHumanoid", (bpy.types.PropertyGroup,), {"__annotations__": {
        "human_bones": CollectionProperty(type=human_bone)}})
    vrm0 = type("DGTestVrm0", (bpy.types.PropertyGroup,), {"__annotations__": {
        "humanoid": PointerProperty(type=humanoid)}})
    armature = type("DGTestVrmArmature", (bpy.types.PropertyGroup,), {"__annotations__": {
        "vrm0": PointerProperty(type=vrm0)}})
    bone = type("DGTestVrmBone", (bpy.types.PropertyGroup,), {"__annotations__": {"uuid": StringProperty()}})
    classes = (node, human_bone, humanoid, vrm0, armature, bone)
    for c in classes:
        bpy.utils.register_class(c)
    bpy.types.Armature.vrm_addon_extension = PointerProperty(type=armature)
    bpy.types.Bone.vrm_addon_extension = PointerProperty(type=bone)
    yield
    del bpy.types.Armature.vrm_addon_extension, bpy.types.Bone.vrm_addon_extension
    for c in reversed(classes):
        bpy.utils.unregister_class(c)


def test_vrm_humanoid_table_is_read_with_the_vrm_addon_installed(empty_scene, vrm_properties_registered):
    obj = rigs.build_family("vrm", "registered")
    names = bone_maps.detect(obj).mapping
    new = _renamed(obj, {b.name: f"Joint {i} of avatar" for i, b in enumerate(obj.data.bones)})
    for i, b in enumerate(obj.data.bones):
        b.vrm_addon_extension.uuid = f"{i:032x}"
    uuid = {b.name: b.vrm_addon_extension.uuid for b in obj.data.bones}
    table = {"hips": "hips", "spine": "spine", "neck": "neck", "head": "head", "left_upper_arm": "leftUpperArm",
             "left_forearm": "leftLowerArm", "right_upper_arm": "rightUpperArm", "right_forearm": "rightLowerArm",
             "left_index1": "leftIndexProximal"}
    for role, vrm_name in table.items():
        entry = obj.data.vrm_addon_extension.vrm0.humanoid.human_bones.add()
        entry.bone, entry.node.bone_uuid = vrm_name, uuid[new(names[role])]
    det = bone_maps.detect(obj)
    assert det.declared and det.preset == "vrm", det.message
    assert all(det.mapping[r] == new(names[r]) for r in table)
