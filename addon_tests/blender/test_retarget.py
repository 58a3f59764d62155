"""Retargeting on code-built rigs of every family: posed world directions equal the target directions."""
import math

import bpy
import numpy as np
import pytest
from mathutils import Matrix, Quaternion, Vector

from diffgesture_blender import bone_maps, retarget, rigs
from diffgesture_blender.bone_maps import FINGERS, NECK_ROLES, SPINE_ROLES
from model_core import skeleton as sk

SRC_FPS = 15


def _rotate(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of vectors v (..., 3) about unit axes by angles (...)."""
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return v * c + np.cross(axis, v) * s + axis * np.sum(axis * v, -1, keepdims=True) * (1 - c)


def motion(skel: sk.Skeleton, frames: int = 16, seed: int = 0) -> np.ndarray:
    """Each bone's mean direction swinging smoothly about its own random axis, up to ~70 degrees (asymmetric L/R)."""
    rng = np.random.default_rng(seed)
    mean = sk.poses_to_canonical(np.zeros(skel.pose_dim), skel).astype(np.float64)
    axes = rng.normal(size=(skel.n_bones, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, skel.n_bones)
    t = np.arange(frames)[:, None] / SRC_FPS
    angle = 1.2 * np.sin(2.0 * t + phase)
    return _rotate(mean[None], axes[None], angle)


def expected(dirs: np.ndarray, skel: sk.Skeleton) -> dict[str, np.ndarray]:
    """Target direction per role (and per chain: 'spine', 'neck'), computed from joint positions."""
    d = {b: dirs[:, i] for i, b in enumerate(skel.bones)}
    joints = dict(zip(skel.joints, np.moveaxis(sk.to_joints(dirs, skel), 1, 0)))
    if "head" in joints:
        top = joints["head"]
    else:
        top = sum(joints[j] for j in ("left_eye", "right_eye", "left_ear", "right_ear")) / 4
    out = {"spine": d["spine"], "neck": top - joints["neck"], "head_forward": d["neck_nose"]}
    for side in ("left", "right"):
        for r in ("clavicle", "upper_arm", "forearm"):
            out[f"{side}_{r}"] = d[f"{side}_{r}"]
        if f"{side}_middle_base" in d:
            out[f"{side}_hand"] = d[f"{side}_middle_base"]
            out[f"{side}_palm"] = joints[f"{side}_index1"] - joints[f"{side}_pinky1"]
            for f in FINGERS:
                for i in (1, 2, 3):
                    out[f"{side}_{f}{i}"] = d[f"{side}_{f}{min(i, 2)}"]
    return {k: v / np.linalg.norm(v, axis=-1, keepdims=True) for k, v in out.items()}


def posed_directions(obj, mapping: dict[str, str]) -> dict[str, np.ndarray]:
    """World-space direction of every mapped bone and of the spine and neck chains at the current frame."""
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mw, pose = ev.matrix_world, ev.pose.bones

    def vec(a, b):
        v = np.array(mw @ b - mw @ a)
        return v / np.linalg.norm(v)

    out = {r: vec(pose[b].head, pose[b].tail) for r, b in mapping.items()}
    for key, roles in (("spine", SPINE_ROLES), ("neck", NECK_ROLES)):
        chain = [mapping[r] for r in roles if r in mapping]
        out[key] = vec(pose[chain[0]].head, pose[chain[-1]].tail)
    for side in ("left", "right"):
        out[f"{side}_palm"] = vec(pose[mapping[f"{side}_pinky1"]].head, pose[mapping[f"{side}_index1"]].head)
    head = pose[mapping["head"]]
    turn = (mw.to_3x3() @ head.matrix.to_3x3() @ head.bone.matrix_local.to_3x3().inverted()).normalized()
    out["head_forward"] = np.array(turn @ facing_forward(obj))
    return out


def facing_forward(obj):
    """The character's forward in armature space: -Y, or +Y for a rig built facing +Y."""
    return Matrix.Rotation(obj.get("facing", 0.0), 3, "Z") @ Vector((0, -1, 0))


def perpendicular(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    v = v - np.dot(v, axis) * axis
    return v / np.linalg.norm(v)


CASES = {
    "mixamo": dict(family="mixamo"),
    "rigify": dict(family="rigify"),
    "metarig": dict(family="metarig"),
    "ue4": dict(family="ue4"),
    "ue5": dict(family="ue5"),
    "vrm": dict(family="vrm"),
    "mixamo-a-pose": dict(family="mixamo", a_pose=True),
    "metarig-rolls": dict(family="metarig", roll_degrees=37.0),
    "ue5-twist": dict(family="ue5", twist_bones=True, a_pose=True),
    "vrm-moved": dict(family="vrm", roll_degrees=-20.0),
    "rigify-euler-facing-+y": dict(family="rigify"),
}


@pytest.mark.parametrize("skeleton", ["ted_gesture", "ted_expressive"])
@pytest.mark.parametrize("case", list(CASES))
def test_world_directions_match_targets(empty_scene, case, skeleton):
    skel = sk.get_skeleton(skeleton)
    empty_scene.render.fps = 24 if skeleton == "ted_gesture" else 30
    obj = rigs.build_rig(**CASES[case])
    if case == "vrm-moved":
        obj.location, obj.rotation_euler, obj.scale = (1.0, -2.0, 0.5), (0.4, -0.3, 2.1), (1.7, 1.7, 1.7)
        bpy.context.view_layer.update()
    if case == "rigify-euler-facing-+y":  # a rig imported facing +Y, with Euler rotation modes
        obj.data.transform(Matrix.Rotation(math.pi, 4, "Z"))
        obj["facing"] = math.pi
        for pb in obj.pose.bones:
            pb.rotation_mode = "YZX"
    detection = bone_maps.detect(obj)
    mapping = detection.mapping
    assert detection.preset == CASES[case]["family"] and not detection.missing_required
    thigh = next(b for b in obj.pose.bones if "thigh" in b.name.lower() or "upleg" in b.name.lower()
                 or "upperleg" in b.name.lower())
    thigh.rotation_quaternion = Quaternion((1, 0, 0), 0.5)

    dirs = motion(skel, seed=len(case))
    action = retarget.apply_motion(obj, dirs, skeleton, mapping, action_name=f"{case}-{skeleton}")
    assert obj.animation_data.action == action

    want = expected(dirs, skel)
    rot = np.array(obj.matrix_world.to_quaternion().to_matrix() @ Matrix.Rotation(obj.get("facing", 0.0), 3, "Z"))
    step = empty_scene.render.fps / SRC_FPS
    checked = 0
    for i in range(len(dirs)):
        if abs(i * step - round(i * step)) > 1e-9:
            continue  # this source frame falls between scene frames
        empty_scene.frame_set(1 + round(i * step))
        got = posed_directions(obj, mapping)
        for role, target in want.items():
            if role in ("left_palm", "right_palm", "head_forward"):  # twists: compare across the bone's axis
                axis = got[role.replace("palm", "hand").replace("_forward", "")]
                err = np.linalg.norm(perpendicular(got[role], axis) - perpendicular(rot @ target[i], axis))
                assert err < 1e-3, f"{case} {skeleton} frame {i} {role}: error {err:.2e}"
            elif role in mapping or role in ("spine", "neck"):
                err = np.linalg.norm(got[role] - rot @ target[i])
                assert err < 1e-3, f"{case} {skeleton} frame {i} {role} ({mapping.get(role)}): error {err:.2e}"
                checked += 1
        # mirror-safety: the bone named as the character's left follows the left vectors, not the right ones
        assert bone_maps.normalize(mapping["left_upper_arm"])[0] == "L"
        assert np.linalg.norm(got["left_upper_arm"] - rot @ want["right_upper_arm"][i]) > 0.05
    assert checked > 20
    assert thigh.rotation_quaternion == Quaternion((1, 0, 0), 0.5)  # outside the map: untouched


def test_previous_action_is_kept_and_unmapped_bones_untouched(empty_scene):
    obj = rigs.build_rig("mixamo")
    thigh, forearm = obj.pose.bones["mixamorig:LeftUpLeg"], obj.pose.bones["mixamorig:LeftForeArm"]
    for frame, angle in ((1, 0.2), (10, 0.6)):
        for pb in (thigh, forearm):
            pb.rotation_quaternion = Quaternion((1, 0, 0), angle)
            pb.keyframe_insert("rotation_quaternion", frame=frame)
    user_action = obj.animation_data.action
    before = {(fc.data_path, fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
              for fc in _fcurves(user_action)}
    empty_scene.frame_set(10)

    mapping = bone_maps.detect(obj).mapping
    action = retarget.apply_motion(obj, motion(sk.TED_GESTURE), "ted_gesture", mapping, action_name=user_action.name,
                                   nla_strip=True)
    assert action != user_action and action.name != user_action.name
    assert user_action.use_fake_user
    after = {(fc.data_path, fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
             for fc in _fcurves(user_action)}
    assert after == before
    assert obj.animation_data.nla_tracks[-1].strips[0].action == action
    keyed = {fc.data_path for fc in _fcurves(action)}
    assert not any("UpLeg" in p for p in keyed)
    for frame in (1, 5, 12):
        empty_scene.frame_set(frame)
        assert thigh.rotation_quaternion == Quaternion((1, 0, 0), 0.6)


def _fcurves(action):
    from bpy_extras import anim_utils
    return anim_utils.action_get_channelbag_for_slot(action, action.slots[0]).fcurves


def test_missing_required_bones_raise_before_any_change(empty_scene):
    obj = rigs.build_rig("ue4", fingers=False)
    mapping = bone_maps.detect(obj).mapping
    del mapping["left_forearm"], mapping["neck"]
    n_actions = len(bpy.data.actions)
    with pytest.raises(ValueError, match="left_forearm") as err:
        retarget.apply_motion(obj, motion(sk.TED_GESTURE), "ted_gesture", mapping, action_name="x")
    assert "left_forearm" in str(err.value) and "neck" in str(err.value)
    assert len(bpy.data.actions) == n_actions and obj.animation_data is None
    with pytest.raises(ValueError, match="shape"):
        retarget.apply_motion(obj, np.zeros((5, 3, 3)), "ted_gesture", bone_maps.detect(obj).mapping,
                              action_name="x")
    assert len(bpy.data.actions) == n_actions
