"""Blender side of retargeting: read an armature, solve, and key the result into a new action (fast foreach_set).

apply_motion checks everything before it changes anything; it creates one action with its own slot, assigns it
(the user's previous action is kept with a fake user), and keys only the driven bones in their own rotation modes.
rekey_range replaces the keys of a frame range of such an action (re-roll, intensity), leaving every other key.
"""
from __future__ import annotations

import numpy as np

from ..shared import skeleton as sk
from . import bone_maps, rigify
from .frame import character_frame, check_standing, snap, targets, world_axes
from .quat import Y, continuous, qaxis, slerp_resample, unit
from .solve import RigRest, driven_roles, solve


def _rig_rest(obj, parent: dict[str, str | None]) -> RigRest:
    """Read rest orientations, heads, lengths and current local rotations from an armature object (parent: bone ->
    parent as the solver is to see them)."""
    bones = obj.data.bones
    children: dict[str | None, list[str]] = {}
    for b, p in parent.items():
        children.setdefault(p, []).append(b)
    order, todo = [], list(children.get(None, []))
    while todo:
        b = todo.pop(0)
        order.append(b)
        todo.extend(children.get(b, []))
    return RigRest(order=order, parent=parent,
                   rest={b.name: np.array(b.matrix_local.to_quaternion()) for b in bones},
                   head={b.name: np.array(b.head_local) for b in bones}, length={b.name: b.length for b in bones},
                   basis={p.name: np.array(p.matrix_basis.to_quaternion()) for p in obj.pose.bones})


def armature_frame(obj, heads: dict[str, np.ndarray], mapping: dict[str, str]) -> np.ndarray:
    """Armature-from-canonical rotation: the character frame read from the mapped bones in world space.

    Without a spine or a pair of arm bones the armature's own +Z / +X stand in for up / left; measured axes within
    10 degrees of one of the armature's axes are taken as that axis (a rest pose's lean or a head set forward
    should not tilt the motion). Only the object's rotation is undone (a non-uniform scale is warned about in
    rig_notes), so motion is keyed in the rig's space. A rest pose that is no standing figure is refused, saying
    what to do (check_standing, character_frame)."""
    up, left, rot = world_axes(obj, heads, mapping)
    try:
        check_standing(up, left)
        up = rot[:, 2] if up is None else snap(up, rot)
        left = rot[:, 0] if left is None else snap(left, rot)
        return rot.T @ character_frame(up, left)
    except ValueError as e:
        raise ValueError(f"cannot retarget onto {obj.name!r}: {e}. Pose it standing (a motion-capture file: go to "
                         "its first frame), then in Pose Mode select every bone and use Pose > Apply > Apply Pose as "
                         "Rest Pose, and generate again") from None


PATHS = {"QUATERNION": ("rotation_quaternion", 4), "AXIS_ANGLE": ("rotation_axis_angle", 4)}  # else Euler


def _data_path(pose_bone) -> tuple[str, int]:
    """The rotation channels a pose bone is keyed in (its own rotation mode) and how many there are."""
    return PATHS.get(pose_bone.rotation_mode, ("rotation_euler", 3))


def _channels(pose_bone, q: np.ndarray, before: np.ndarray | None = None,
              after: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """The data path and per-frame values for quaternions q in the pose bone's own rotation mode. before / after:
    the values of the kept keys either side when q replaces a range of keys (rekey_range); the new keys join them
    without a sign flip (quaternion, axis-angle) or a whole turn (Euler)."""
    from mathutils import Euler, Quaternion

    mode = pose_bone.rotation_mode
    path = _data_path(pose_bone)[0]
    if mode == "QUATERNION":
        return path, continuous(q, before, after)
    if mode == "AXIS_ANGLE":
        before, after = (None if v is None else qaxis(unit(np.asarray(v[1:], float)), np.asarray(v[0], float))
                         for v in (before, after))
        q = continuous(q, before, after)
        s = np.linalg.norm(q[:, 1:], axis=-1, keepdims=True)
        axis = np.where(s > 1e-9, q[:, 1:] / np.maximum(s, 1e-12), Y)
        return path, np.concatenate([2.0 * np.arctan2(s, q[:, :1]), axis], -1)
    anchor = before if before is not None else after
    backwards = before is None and after is not None  # chained from the kept key after the range
    prev = None if anchor is None else Euler(anchor, mode)
    eulers = []
    for row in (q[::-1] if backwards else q):
        prev = Quaternion(row).to_euler(mode, prev) if prev else Quaternion(row).to_euler(mode)
        eulers.append(prev)
    return path, np.array(eulers[::-1] if backwards else eulers)


def _new_action(obj, action_name: str, nla_strip: bool, start_frame: int):
    """A new action with its own slot, assigned to obj; the user's previous action is kept (fake user)."""
    import bpy

    action = bpy.data.actions.new(action_name)
    slot = action.slots.new(id_type="OBJECT", name=obj.name)
    anim = obj.animation_data or obj.animation_data_create()
    if anim.action is not None and not anim.action.use_fake_user and anim.action.users <= 1:
        anim.action.use_fake_user = True  # so that it survives saving once unassigned
    anim.action = action
    anim.action_slot = slot
    layer = action.layers.new("Layer")
    channelbag = layer.strips.new(type="KEYFRAME").channelbag(slot, ensure=True)
    if nla_strip:
        track = anim.nla_tracks.new()
        track.name = action.name
        strip = track.strips.new(action.name, start_frame, action)
        strip.action_slot = slot
    return action, channelbag


def solve_motion(armature_obj, directions, skeleton_name: str, mapping: dict[str, str], *, src_fps: float,
                 dst_fps: float, parts: set[str], partial: bool) -> tuple[dict[str, np.ndarray], list]:
    """Local rotations (scene frames, 4) per keyed bone for canonical directions (frames, n_bones, 3) at src_fps
    resampled to dst_fps, and the constants (data path, value) a Rigify rig holds; changes nothing.

    A bad map or input, or nothing to drive, raises ValueError listing the problems. partial: drive the mapped bones
    even when required roles are unmapped."""
    skel = sk.get_skeleton(skeleton_name)
    dirs = np.asarray(directions, dtype=np.float64)
    if dirs.ndim != 3 or dirs.shape[1:] != (skel.n_bones, 3) or len(dirs) < 1:
        raise ValueError(f"{skel.name} motion must have shape (frames, {skel.n_bones}, 3), got {dirs.shape}")
    problems = bone_maps.validate(armature_obj, mapping, partial)
    if problems:
        raise ValueError(f"cannot retarget onto {armature_obj.name!r}: " + "; ".join(problems))
    dirs = slerp_resample(dirs, src_fps, dst_fps)
    controls = None
    if rigify.is_rigify(armature_obj):  # solve on the ORG bones (and the neck control) that have a control to key
        mapping, tree, controls = rigify.view(armature_obj, mapping)
    else:
        tree = bone_maps.parents(armature_obj)
    rig = _rig_rest(armature_obj, tree)
    frame = armature_frame(armature_obj, rig.head, mapping)
    tg = {k: v @ frame.T for k, v in targets(dirs, skel).items()}
    driven = driven_roles(mapping, tg, set(parts))
    if not driven:
        raise ValueError(f"nothing to drive on {armature_obj.name!r}: the {skel.name} skeleton and the rig's mapped "
                         f"bones share no role in the chosen parts ({', '.join(sorted(parts))})")
    constants = []
    if controls is not None:
        driven = {r for r in driven if mapping[r] in controls}
        constants = rigify.switches(armature_obj)
    local = solve(rig, mapping, driven, tg, frame)
    if controls is not None:
        local = {controls[b]: q for b, q in local.items()}
    return local, constants


def apply_motion(armature_obj, directions, skeleton_name: str, mapping: dict[str, str], *, src_fps: float = 15.0,
                 start_frame: int = 1, action_name: str, parts: set[str] = frozenset({"spine", "arms", "fingers"}),
                 nla_strip: bool = False, partial: bool = False):
    """Key canonical directions (frames, n_bones, 3) onto the armature as a new action; returns the action.

    Everything is checked before anything is changed (see solve_motion)."""
    import bpy

    scene = bpy.context.scene
    local, constants = solve_motion(armature_obj, directions, skeleton_name, mapping, src_fps=src_fps,
                                    dst_fps=scene.render.fps / scene.render.fps_base, parts=parts, partial=partial)
    n = len(next(iter(local.values())))
    action, channelbag = _new_action(armature_obj, action_name, nla_strip, start_frame)
    frames = start_frame + np.arange(n, dtype=np.float64)
    co = np.empty(2 * len(frames))
    co[0::2] = frames
    for bone, q in local.items():
        pose_bone = armature_obj.pose.bones[bone]
        path, values = _channels(pose_bone, q)
        group = channelbag.groups.new(bone)
        for i in range(values.shape[1]):
            fcurve = channelbag.fcurves.new(f'pose.bones["{bone}"].{path}', index=i)
            fcurve.group = group
            fcurve.keyframe_points.add(len(frames))
            co[1::2] = values[:, i]
            fcurve.keyframe_points.foreach_set("co", co)
            fcurve.update()
    for path, value in constants:  # held for the whole clip, inside this action only
        fcurve = channelbag.fcurves.new(path)
        fcurve.keyframe_points.add(2)
        fcurve.keyframe_points.foreach_set("co", [frames[0], value, frames[-1], value])
        fcurve.update()
    return action


def rekey_range(armature_obj, action, directions, skeleton_name: str, mapping: dict[str, str], *, src_fps: float,
                dst_fps: float, start_frame: int, frames: tuple[int, int], parts: set[str], partial: bool) -> int:
    """Replace the keys of the driven bones at frames[0]..frames[1] (inclusive) of a take's action with the keys of
    new directions for the whole take (keyed from start_frame at dst_fps, as apply_motion keyed it); every key
    outside the range, and every other curve, stays as it is. Returns the number of keys written."""
    from bpy_extras import anim_utils

    local, _ = solve_motion(armature_obj, directions, skeleton_name, mapping, src_fps=src_fps, dst_fps=dst_fps,
                            parts=parts, partial=partial)
    n = len(next(iter(local.values())))
    first, last = max(frames[0], start_frame), min(frames[1], start_frame + n - 1)
    keyed = np.arange(first - start_frame, last - start_frame + 1)
    anim = armature_obj.animation_data
    channelbag = anim_utils.action_get_channelbag_for_slot(action, anim.action_slot)
    if channelbag is None:
        raise ValueError(f"the action {action.name!r} has no keys for {armature_obj.name!r}'s slot")
    curves = []
    for bone, q in local.items():  # every curve is found before any key is written
        pose_bone = armature_obj.pose.bones[bone]
        path, size = _data_path(pose_bone)
        fcurves = [channelbag.fcurves.find(f'pose.bones["{bone}"].{path}', index=i) for i in range(size)]
        if None in fcurves:
            raise ValueError(f"the action {action.name!r} has no {path} curve for the bone {bone!r} (was its "
                             "rotation mode changed after generating?); set it back or generate again")
        _, values = _channels(pose_bone, q[keyed], *_kept_neighbours(fcurves, frames))
        curves += zip(fcurves, values.T)
    for fcurve, values in curves:
        points = fcurve.keyframe_points
        co = _coords(points)
        inside = np.flatnonzero((co[0::2] >= frames[0]) & (co[0::2] <= frames[1]))
        for k in inside[::-1]:
            points.remove(points[int(k)], fast=True)
        kept = len(points)
        points.add(len(keyed))
        co = _coords(points)  # the kept keys read back as they are, the new ones after them
        co[2 * kept::2] = start_frame + keyed
        co[2 * kept + 1::2] = values
        points.foreach_set("co", co)
        fcurve.update()  # sorts the keys by frame and sets the new keys' automatic handles
    return len(keyed) * len(curves)


def _coords(points) -> np.ndarray:
    """A curve's keys as one flat array of frame, value pairs, the layout foreach_get and foreach_set use."""
    co = np.empty(2 * len(points))
    points.foreach_get("co", co)
    return co


def _kept_neighbours(fcurves, frames: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The values of a channel group's (one bone's rotation) nearest keys before and after frames[0]..frames[1],
    which a re-keyed range must join; None on a side where a curve has no key."""
    before, after = [], []
    for fcurve in fcurves:
        co = _coords(fcurve.keyframe_points)
        x, y = co[0::2], co[1::2]
        lo, hi = x < frames[0], x > frames[1]
        if lo.any():
            before.append(y[lo][np.argmax(x[lo])])
        if hi.any():
            after.append(y[hi][np.argmin(x[hi])])
    return tuple(np.array(side) if len(side) == len(fcurves) else None for side in (before, after))
