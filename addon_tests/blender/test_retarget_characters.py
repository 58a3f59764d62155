"""Characters as third-party files leave them: leaves aimed by importers' tails, HumanIK names with accessory chains,
mocap whose zero pose lies along one line, stylised rigs without a neck, chest or clavicles (issue 26)."""
import math

import bpy
import numpy as np
import pytest

from addon_tests.blender import rig_families as rigs
from addon_tests.blender.test_retarget import ARMS, check_directions, degrees, motion, world_turns
from diffgesture_blender import retarget
from diffgesture_blender.retarget import bone_maps
from model_core import skeleton as sk


def drive(obj, skeleton: str = "ted_expressive", seed: int = 3,
          mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Key the same 16 frames of motion onto the rig at 30 fps with a map (default: detected); returns the map."""
    bpy.context.scene.render.fps = 30
    mapping = mapping or bone_maps.detect(obj).mapping
    dirs = motion(sk.get_skeleton(skeleton), seed=seed)
    retarget.apply_motion(obj, dirs, skeleton, mapping, action_name=obj.name)
    return mapping


UP = np.array([0.0, 0.0, 1.0])
LEAVES = {  # case -> (family, build options of the plain rig, of the rig as the importer left it)
    "ue4-fbx-default-tails-along-y": ("ue4", dict(y_up_cm=True), dict(y_up_cm=True, y_tails=True)),
    "mixamo-fbx-tails-across-rolled": ("mixamo", dict(y_up_cm=True), dict(y_up_cm=True, cross_axis=True,
                                                                          roll_degrees=35.0)),
    "mixamo-no-fingers-tails-along-y": ("mixamo", dict(fingers=False), dict(fingers=False, y_tails=True)),
}


@pytest.mark.parametrize("case", list(LEAVES))
def test_leaf_bones_turn_as_on_the_plain_rig_whatever_their_tails(empty_scene, case):
    """The head, hands without fingers and fingertips end no joint-to-joint segment; the same motion on a rig whose
    tails an importer laid along +Y or across the limbs turns every mapped bone in the world as on the plain rig: the
    head's up vector (world up carried by the head's rotation) within 0.1 degrees, every other axis too."""
    family, plain_options, imported_options = LEAVES[case]
    plain = rigs.build_family(family, "plain", **plain_options)
    imported = rigs.build_family(family, "imported", **imported_options)
    mapping = drive(plain)
    assert drive(imported) == mapping
    frames = range(1, 17)
    bones = list(mapping.values())
    want, got = world_turns(plain, bones, frames), world_turns(imported, bones, frames)
    head = mapping["head"]
    head_up = degrees(want[head] @ UP, got[head] @ UP)
    assert degrees(want[head] @ UP, np.broadcast_to(UP, (16, 3))).max() > 10.0  # the head does turn
    assert head_up.max() < 0.1, f"{case}: the head's up is {head_up.max():.2f} degrees off"
    for bone in bones:  # the whole rotation: every axis it carries
        off = max(degrees(want[bone][:, :, k], got[bone][:, :, k]).max() for k in range(3))
        assert off < 0.1, f"{case}: {bone} turns {off:.2f} degrees off the plain rig"


def test_a_zero_length_end_site_does_not_aim_the_head(empty_scene):
    """A BVH whose Head ends in a zero-length End Site (Blender's importer gives it a 0.001 tail) turns the head
    nearly as the same file with a proper head-top End Site does: the head is aimed up, as long as the neck (the
    file does not say where the top of the head is, so the neck chain's share differs a little)."""
    proper = rigs.import_bvh("cmu", "proper")
    zero = rigs.import_bvh("cmu", "zero", zero_ends={"Head", "LeftHandIndex1", "RightHandIndex1"})
    assert (zero.data.bones["Head"].tail_local - proper.data.bones["Head"].tail_local).length > 0.05
    mapping = drive(proper, "ted_gesture")
    drive(zero, "ted_gesture", mapping=mapping)
    frames = range(1, 17)
    want, got = world_turns(proper, [mapping["head"]], frames), world_turns(zero, [mapping["head"]], frames)
    assert degrees(want["Head"] @ UP, got["Head"] @ UP).max() < 3.0


NO_NECK = {"no-neck": {"Neck"},
           "no-neck-chest-clavicles": {"Neck", "Spine1", "Spine2", "LeftShoulder", "RightShoulder"}}


@pytest.mark.parametrize("case", list(NO_NECK))
def test_a_rig_without_neck_chest_or_clavicles_is_driven_with_one_note(empty_scene, case):
    """A stylised game character: the head straight on the chest (and one spine bone, the arms straight on it) is not
    refused; the head takes the neck's whole direction, the spine the chest's, and one note says so."""
    rows = rigs.without(rigs.mixamo(fingers=False), NO_NECK[case])
    obj = rigs.build(rows, case)
    detection = bone_maps.detect(obj)
    assert not detection.missing_required and "neck" not in detection.mapping, detection.message
    assert bone_maps.validate(obj, detection.mapping) == []
    skel = sk.get_skeleton("ted_gesture")
    empty_scene.render.fps = 30
    dirs = motion(skel, seed=9)
    retarget.apply_motion(obj, dirs, skel.name, detection.mapping, action_name=case)  # not partial
    only = ARMS + ("spine", "neck", "head_forward")
    assert check_directions(empty_scene, obj, detection.mapping, dirs, skel, np.eye(3), only) == 7 * 16
    notes = retarget.rig_notes(obj, detection.mapping, skel.name, {"spine", "arms"})
    folded = [n for n in notes if n.startswith("no neck bone: the head carries the neck's share")]
    assert len(folded) == 1, notes
    everything = "no chest bone" in folded[0] and "no left and right clavicle bones" in folded[0]
    assert everything == (len(NO_NECK[case]) > 1)


@pytest.mark.parametrize("captured", [False, True])
def test_mocap_whose_zero_pose_lies_along_a_line_is_refused_saying_what_to_do(empty_scene, captured):
    """A BVH whose every OFFSET runs along +X (its zero pose one straight line, its frames standing), through
    Blender's own importer, exact or as a real file's numbers leave it (its left side 0.1 mm off the line: then the
    shoulders' line is not zero, runs across the spine, and was taken for the character's left, laying it down):
    the names map, but no character frame can be read from such a rest pose, so generating refuses before changing
    anything and says what to do; done as it says, the motion follows the generated vectors."""
    obj = rigs.import_bvh("cmu", "mocap", lying=True, captured=captured)
    heads = np.array([obj.matrix_world @ b.head_local for b in obj.data.bones])
    assert np.ptp(heads[:, 1:], axis=0).max() < 1e-3  # the rest skeleton: one line along world X
    detection = bone_maps.detect(obj)
    assert detection.preset == "mixamo" and not detection.missing_required, detection.message
    skel = sk.get_skeleton("ted_gesture")
    dirs = motion(skel, seed=4)
    file_motion, actions = obj.animation_data.action, set(bpy.data.actions)
    with pytest.raises(ValueError, match="its rest pose is not a standing figure") as err:
        retarget.apply_motion(obj, dirs, skel.name, detection.mapping, action_name="lying")
    assert "Apply Pose as Rest Pose" in str(err.value) and "first frame" in str(err.value)
    assert set(bpy.data.actions) == actions and obj.animation_data.action == file_motion
    empty_scene.frame_set(1)  # what the message says: the file's first frame applied as the rest pose
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="POSE")
    bpy.ops.pose.select_all(action="SELECT")
    bpy.ops.pose.armature_apply(selected=False)
    bpy.ops.object.mode_set(mode="OBJECT")
    detection = bone_maps.detect(obj)
    assert not detection.missing_required, detection.message
    empty_scene.render.fps = 30
    retarget.apply_motion(obj, dirs, skel.name, detection.mapping, action_name="standing")
    only = ARMS + ("spine", "neck", "head_forward")
    assert check_directions(empty_scene, obj, detection.mapping, dirs, skel, np.eye(3), only) == 7 * 16
    assert not any("upright" in n for n in retarget.rig_notes(obj, detection.mapping, skel.name, {"spine", "arms"}))


def test_a_character_lying_in_the_world_is_keyed_lying_with_a_word(empty_scene):
    """A whole rig laid down in the scene (its rest a standing figure, its object turned 90 degrees) is keyed in its
    own frame, and a note says so."""
    obj = rigs.build_family("mixamo", "lying", fingers=False)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    bpy.context.view_layer.update()
    mapping = bone_maps.detect(obj).mapping
    notes = retarget.rig_notes(obj, mapping, "ted_gesture", {"spine", "arms"})
    assert any("does not stand upright" in n and "91 degrees from the world's up" in n for n in notes), notes
    skel = sk.get_skeleton("ted_gesture")
    empty_scene.render.fps = 30
    dirs = motion(skel, seed=2)
    retarget.apply_motion(obj, dirs, skel.name, mapping, action_name="lying")
    world = np.array(obj.matrix_world.to_3x3().normalized())  # the figure's own frame, turned with the object
    assert check_directions(empty_scene, obj, mapping, dirs, skel, world, ARMS + ("spine",)) == 5 * 16


def _renamed_bones(obj) -> dict[str, str]:
    """Every bone renamed Bone000, Bone001 ... (no name says anything); returns old name -> new name."""
    new = {}
    for i, b in enumerate(obj.data.bones):
        new[b.name] = f"Bone{i:03d}"
        b.name = f"Bone{i:03d}"
    return new


@pytest.mark.parametrize("names", ["humanik", "meaningless"])
def test_humanik_character_with_sleeves_and_twin_tails_maps_the_body(empty_scene, names):
    """A Unity humanoid with Maya HumanIK names (Character1_*), four sleeve chains under each forearm, two twin-tail
    hair chains under the head and a skirt: the names map every body role (the rig's prefix dropped) and, with every
    bone renamed, the structure alone finds the same bones (the hand, not the forearm the sleeves branch from; the
    head, not a hair root above its joint; left and right from the feet, not from skirt strands starting below the
    hip joints); the arms, fingers, spine and neck then follow the generated vectors."""
    obj = rigs.build_family("humanik", "Character1")
    truth = {r: f"Character1_{b}" for r, b in {
        "hips": "Hips", "spine": "Spine", "spine1": "Spine1", "spine2": "Spine2", "neck": "Neck", "head": "Head",
        **{f"{s}_{r}": f"{s.capitalize()}{b}" for s in ("left", "right") for r, b in (
            ("clavicle", "Shoulder"), ("upper_arm", "Arm"), ("forearm", "ForeArm"), ("hand", "Hand"))},
        **{f"{s}_{f}{i}": f"{s.capitalize()}Hand{f.capitalize()}{i}" for s in ("left", "right")
           for f in rigs.FINGERS for i in (1, 2, 3)}}.items()}
    if names == "meaningless":
        new = _renamed_bones(obj)
        truth = {r: new[b] for r, b in truth.items()}
    detection = bone_maps.detect(obj)
    assert detection.preset == ("mixamo" if names == "humanik" else "structure"), detection.message
    assert not detection.missing_required and detection.mapping == truth, detection.message
    skel = sk.get_skeleton("ted_expressive")
    empty_scene.render.fps = 30
    dirs = motion(skel, seed=6)
    retarget.apply_motion(obj, dirs, skel.name, detection.mapping, action_name=names)
    only = [r for r in truth if r.endswith(("arm", "hand", "1", "2"))] + ["spine", "neck", "head_forward"]
    assert check_directions(empty_scene, obj, detection.mapping, dirs, skel, np.eye(3), only) == 29 * 16
