"""Retargeting: canonical direction vectors onto a humanoid armature as keyframes in a new action.

The canonical character frame (right-handed, +Z up, facing -Y, left at +X) is the armature's object space, up to a
turn about Z: the rig's left is read from its shoulders (left minus right upper-arm head, or the next mapped pair
of arm bones on a partial rig) and snapped to the nearest object axis, so rigs that face -Y (all built-in families
as imported into Blender) need no correction and ones that face +Y or +-X are turned. Motion therefore turns and
scales with the armature object.

Per frame, parents first, each driven bone gets the shortest swing from its direction under its posed parent to the
target direction (its twist is kept from rest, so T/A-pose and bone rolls do not matter). The skeleton's single
spine vector is spread evenly over the rig's mapped spine bones and the chain (first head -> last tail) is then
aimed exactly; the neck chain (neck bones + head) aims at the head top (TED Gesture) or the eye/ear centre
(Expressive) and the head turns about its own axis to face the nose. With finger data the hand aims at the middle
finger base and twists so that the index-to-pinky line matches the skeleton's palm. Rig finger segments 1 and 2
take the skeleton's segments 1 and 2; segment 3 follows segment 2. Unmapped bones keep their current pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bone_maps
from .bone_maps import ARM_ROLES, FINGER_ROLES, FINGERS, NECK_ROLES, SPINE_ROLES
from .core import skeleton as sk

Y = np.array([0.0, 1.0, 0.0])
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])
PARTS = {"spine": SPINE_ROLES + NECK_ROLES, "arms": [f"{s}_{r}" for s in ("left", "right") for r in ARM_ROLES],
         "fingers": [f"{s}_{r}" for s in ("left", "right") for r in FINGER_ROLES]}


# --- quaternions (w, x, y, z) on arrays (..., 4), pure numpy ---------------------------------------------------

def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b."""
    aw, av, bw, bv = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return np.concatenate([aw * bw - np.sum(av * bv, -1, keepdims=True),
                           aw * bv + bw * av + np.cross(av, bv)], -1)


def qconj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4)."""
    w, u = q[..., :1], q[..., 1:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def qbetween(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest rotation taking directions u to v (..., 3); a half turn about a perpendicular axis if opposite."""
    u, v = np.broadcast_arrays(_unit(u), _unit(v))
    d = np.sum(u * v, -1, keepdims=True)
    q = np.concatenate([1.0 + d, np.cross(u, v)], -1)
    opposite = d[..., 0] < -1.0 + 1e-9
    if np.any(opposite):
        w = u[opposite]
        perp = np.where(np.abs(w[:, :1]) < 0.9, np.cross(w, [1.0, 0.0, 0.0]), np.cross(w, [0.0, 1.0, 0.0]))
        q[opposite] = np.concatenate([np.zeros((len(w), 1)), _unit(perp)], -1)
    return _unit(q)


def qaxis(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotation by angle (...) about unit axis (..., 3)."""
    h = 0.5 * np.asarray(angle)[..., None]
    return np.concatenate([np.cos(h), np.sin(h) * axis], -1)


def qpow(q: np.ndarray, t: float) -> np.ndarray:
    """The fraction t of rotation q (slerp from identity)."""
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2.0 * np.arctan2(s, q[..., 0])
    return qaxis(q[..., 1:] / np.maximum(s, 1e-12)[..., None], t * angle)


def twist_onto(axis: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Rotation about axis taking the perpendicular part of `have` onto that of `want`."""
    have = have - np.sum(have * axis, -1, keepdims=True) * axis
    want = want - np.sum(want * axis, -1, keepdims=True) * axis
    angle = np.arctan2(np.sum(np.cross(have, want) * axis, -1), np.sum(have * want, -1))
    return qaxis(axis, angle)


def slerp_resample(dirs: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample unit directions (frames, n, 3) from src_fps to dst_fps by spherical interpolation."""
    n_out = int(np.floor((len(dirs) - 1) * dst_fps / src_fps + 1e-6)) + 1
    s = np.arange(n_out) * (src_fps / dst_fps)
    i0 = np.minimum(np.floor(s + 1e-6).astype(int), len(dirs) - 1)
    i1 = np.minimum(i0 + 1, len(dirs) - 1)
    f = np.clip(s - i0, 0.0, 1.0)[:, None, None]
    a, b = _unit(dirs[i0].astype(np.float64)), _unit(dirs[i1].astype(np.float64))
    theta = np.arccos(np.clip(np.sum(a * b, -1, keepdims=True), -1.0, 1.0))
    sin = np.sin(theta)
    small = sin < 1e-6
    wa = np.where(small, 1.0 - f, np.sin((1.0 - f) * theta) / np.where(small, 1.0, sin))
    wb = np.where(small, f, np.sin(f * theta) / np.where(small, 1.0, sin))
    return _unit(wa * a + wb * b)


def targets(dirs: np.ndarray, skel: sk.Skeleton) -> dict[str, np.ndarray]:
    """Target vectors per role (and 'head_forward', '<side>_palm') from directions (frames, n_bones, 3)."""
    d = {b: dirs[:, i] for i, b in enumerate(skel.bones)}
    length = dict(zip(skel.bones, skel.lengths))
    out = {"spine": d["spine"], "head_forward": d["neck_nose"]}
    if "nose_head" in d:  # neck -> head top
        out["neck"] = length["neck_nose"] * d["neck_nose"] + length["nose_head"] * d["nose_head"]
    else:  # neck -> centre of eyes and ears
        eyes = [length[f"nose_{s}_eye"] * d[f"nose_{s}_eye"] for s in ("left", "right")]
        ears = [e + length[f"{s}_eye_ear"] * d[f"{s}_eye_ear"] for e, s in zip(eyes, ("left", "right"))]
        out["neck"] = length["neck_nose"] * d["neck_nose"] + sum(eyes + ears) / 4.0
    for side in ("left", "right"):
        for r in ("clavicle", "upper_arm", "forearm"):
            out[f"{side}_{r}"] = d[f"{side}_{r}"]
        if f"{side}_middle_base" in d:
            out[f"{side}_hand"] = d[f"{side}_middle_base"]
            out[f"{side}_palm"] = (length[f"{side}_index_base"] * d[f"{side}_index_base"]
                                   - length[f"{side}_pinky_base"] * d[f"{side}_pinky_base"])
            for f in FINGERS:
                for i in (1, 2, 3):
                    out[f"{side}_{f}{i}"] = d[f"{side}_{f}{min(i, 2)}"]
    return {k: _unit(v.astype(np.float64)) for k, v in out.items()}


def character_frame(left: np.ndarray) -> np.ndarray:
    """Object-from-canonical rotation (3x3): the rig's left snapped to the nearest horizontal object axis."""
    axes = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    x = axes[np.argmax(axes @ left)]
    z = np.array([0.0, 0.0, 1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


@dataclass
class RigRest:
    """What the solver needs from an armature, in armature space: bones parents first, rest and current pose."""

    order: list[str]
    parent: dict[str, str | None]
    rest: dict[str, np.ndarray]  # rest orientation quaternion (bone.matrix_local)
    head: dict[str, np.ndarray]
    length: dict[str, float]
    basis: dict[str, np.ndarray]  # current local rotation (pose_bone.matrix_basis), kept on undriven bones


def solve(rig: RigRest, mapping: dict[str, str], driven: set[str], tg: dict[str, np.ndarray],
          forward: np.ndarray) -> dict[str, np.ndarray]:
    """Local rotations (frames, 4) of the bones of the driven roles; targets tg and forward in armature space."""
    n = len(next(iter(tg.values())))
    world: dict[str, np.ndarray] = {}
    local: dict[str, np.ndarray] = {}
    under: dict[str, np.ndarray] = {}  # orientation under the posed parent with an identity local rotation
    role_of = {mapping[r]: r for r in driven}
    chains = {}
    for roles, key in ((SPINE_ROLES, "spine"), (NECK_ROLES, "neck")):
        bones = [mapping[r] for r in roles if r in driven]
        if bones:
            path = [bones[-1]]
            while path[-1] != bones[0]:
                path.append(rig.parent[path[-1]])
            chains[bones[0]] = (path[::-1], set(bones), key)
    needed = set()
    for b in role_of:
        while b and b not in needed:
            needed.add(b)
            b = rig.parent[b]

    def place(b: str, rot: np.ndarray | None) -> None:
        """Pose bone b: apply world rotation rot under its posed parent, or keep its current local rotation."""
        p = rig.parent[b]
        under[b] = (qmul(world[p], qmul(qconj(rig.rest[p]), rig.rest[b])) if p
                    else np.broadcast_to(rig.rest[b], (n, 4)))
        if rot is None:
            world[b] = qmul(under[b], np.broadcast_to(rig.basis[b], (n, 4)))
        else:
            world[b] = qmul(rot, under[b])
            local[b] = qmul(qconj(under[b]), world[b])

    def twist(b: str, have_local: np.ndarray, want: np.ndarray) -> None:
        """Turn bone b about its own axis so that its local vector have_local points towards want."""
        world[b] = qmul(twist_onto(qrot(world[b], Y), qrot(world[b], have_local), want), world[b])
        local[b] = qmul(qconj(under[b]), world[b])

    def chain_vector(path: list[str]) -> np.ndarray:
        """Posed vector from the head of the chain's first bone to the tail of its last."""
        segments = [qrot(world[a], qrot(qconj(rig.rest[a]), rig.head[b] - rig.head[a])) for a, b in zip(path, path[1:])]
        return sum(segments, qrot(world[path[-1]], Y * rig.length[path[-1]]))

    def solve_chain(path: list[str], bones: set[str], target: np.ndarray) -> None:
        """Spread the swing evenly over the chain's driven bones, then aim the chain exactly from its first bone."""
        identity = np.broadcast_to(IDENTITY, (n, 4))
        for b in path:
            place(b, identity if b in bones else None)
        share = qpow(qbetween(chain_vector(path), target), 1.0 / len(bones))
        for b in path:
            place(b, share if b in bones else None)
        fix = qbetween(chain_vector(path), target)
        for b in path:
            world[b] = qmul(fix, world[b])
            if b != path[0]:
                under[b] = qmul(fix, under[b])
        local[path[0]] = qmul(qconj(under[path[0]]), world[path[0]])

    for b in rig.order:
        if b not in needed or b in world:
            continue
        role = role_of.get(b)
        if b in chains:
            path, bones, key = chains[b]
            solve_chain(path, bones, tg[key])
            if key == "neck" and role_of.get(path[-1]) == "head":  # face the nose
                twist(path[-1], qrot(qconj(rig.rest[path[-1]]), forward), tg["head_forward"])
        elif role is None:
            place(b, None)
        else:
            place(b, np.broadcast_to(IDENTITY, (n, 4)))
            place(b, qbetween(qrot(world[b], Y), tg[role]))
            side = role.split("_")[0]
            if role.endswith("_hand") and f"{side}_palm" in tg and {f"{side}_index1", f"{side}_pinky1"} <= set(mapping):
                across = rig.head[mapping[f"{side}_index1"]] - rig.head[mapping[f"{side}_pinky1"]]
                twist(b, qrot(qconj(rig.rest[b]), across), tg[f"{side}_palm"])
    return local


def rig_left(head: dict[str, np.ndarray], mapping: dict[str, str]) -> np.ndarray:
    """The rig's left in armature space from its first mapped pair of arm bones; +X (facing -Y) without one."""
    for role in ("upper_arm", "forearm", "clavicle", "hand"):
        left, right = mapping.get(f"left_{role}"), mapping.get(f"right_{role}")
        if left and right:
            return head[left] - head[right]
    return np.array([1.0, 0.0, 0.0])


def driven_roles(mapping: dict[str, str], tg: dict[str, np.ndarray], parts: set[str]) -> set[str]:
    """Mapped roles that the chosen body parts and the skeleton's data can drive."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown body parts {sorted(unknown)}; known: {sorted(PARTS)}")
    roles = {r for p in parts for r in PARTS[p] if r in mapping}
    return {r for r in roles if r in tg or r in SPINE_ROLES + NECK_ROLES}


# --- Blender side ------------------------------------------------------------------------------------------------

def _rig_rest(obj) -> RigRest:
    """Read rest orientations, heads, lengths and current local rotations from an armature object."""
    bones = obj.data.bones
    order, todo = [], [b for b in bones if b.parent is None]
    while todo:
        b = todo.pop(0)
        order.append(b.name)
        todo.extend(b.children)
    return RigRest(order=order, parent={b.name: b.parent.name if b.parent else None for b in bones},
                   rest={b.name: np.array(b.matrix_local.to_quaternion()) for b in bones},
                   head={b.name: np.array(b.head_local) for b in bones}, length={b.name: b.length for b in bones},
                   basis={p.name: np.array(p.matrix_basis.to_quaternion()) for p in obj.pose.bones})


def _channels(pose_bone, q: np.ndarray) -> tuple[str, np.ndarray]:
    """The data path and per-frame values for quaternions q in the pose bone's own rotation mode."""
    from mathutils import Quaternion

    q = q * np.cumprod(np.r_[1.0, np.sign(np.sum(q[1:] * q[:-1], -1) + 1e-12)])[:, None]  # no sign flips
    mode = pose_bone.rotation_mode
    if mode == "QUATERNION":
        return "rotation_quaternion", q
    if mode == "AXIS_ANGLE":
        s = np.linalg.norm(q[:, 1:], axis=-1, keepdims=True)
        axis = np.where(s > 1e-9, q[:, 1:] / np.maximum(s, 1e-12), Y)
        return "rotation_axis_angle", np.concatenate([2.0 * np.arctan2(s, q[:, :1]), axis], -1)
    eulers, prev = [], None
    for row in q:
        prev = Quaternion(row).to_euler(mode, prev) if prev else Quaternion(row).to_euler(mode)
        eulers.append(prev)
    return "rotation_euler", np.array(eulers)


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


def apply_motion(armature_obj, directions, skeleton_name: str, mapping: dict[str, str], *, src_fps: float = 15.0,
                 start_frame: int = 1, action_name: str, parts: set[str] = frozenset({"spine", "arms", "fingers"}),
                 nla_strip: bool = False, partial: bool = False):
    """Key canonical directions (frames, n_bones, 3) onto the armature as a new action; returns the action.

    Everything is checked before anything is changed: a bad map or input, or nothing to drive, raises ValueError
    listing the problems. partial: drive the mapped bones even when required roles are unmapped.
    """
    import bpy

    skel = sk.get_skeleton(skeleton_name)
    dirs = np.asarray(directions, dtype=np.float64)
    if dirs.ndim != 3 or dirs.shape[1:] != (skel.n_bones, 3) or len(dirs) < 1:
        raise ValueError(f"{skel.name} motion must have shape (frames, {skel.n_bones}, 3), got {dirs.shape}")
    problems = bone_maps.validate(armature_obj, mapping, partial)
    if problems:
        raise ValueError(f"cannot retarget onto {armature_obj.name!r}: " + "; ".join(problems))
    scene = bpy.context.scene
    dirs = slerp_resample(dirs, src_fps, scene.render.fps / scene.render.fps_base)
    rig = _rig_rest(armature_obj)
    frame = character_frame(rig_left(rig.head, mapping))
    tg = {k: v @ frame.T for k, v in targets(dirs, skel).items()}
    driven = driven_roles(mapping, tg, set(parts))
    if not driven:
        raise ValueError(f"nothing to drive on {armature_obj.name!r}: the {skel.name} skeleton and the rig's mapped "
                         f"bones share no role in the chosen parts ({', '.join(sorted(parts))})")
    local = solve(rig, mapping, driven, tg, frame @ np.array([0.0, -1.0, 0.0]))

    action, channelbag = _new_action(armature_obj, action_name, nla_strip, start_frame)
    frames = start_frame + np.arange(len(dirs), dtype=np.float64)
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
    return action


def rig_notes(armature_obj, mapping: dict[str, str], skeleton_name: str, parts: set[str]) -> list[str]:
    """Warnings about what a generation will not do as the user may expect: skipped parts, constraints, scale."""
    skel = sk.get_skeleton(skeleton_name)
    notes = []
    rig_fingers = any(r in mapping for r in PARTS["fingers"])
    if "fingers" in parts and "left_middle_base" not in skel.bones and rig_fingers:
        notes.append(f"fingers were not driven: the {skel.name} skeleton has no fingers (use a TED Expressive "
                     "checkpoint for finger motion)")
    elif "fingers" in parts and "left_middle_base" in skel.bones and not rig_fingers:
        notes.append(f"fingers were skipped: {armature_obj.name!r} has no finger bones mapped")
    missing = bone_maps.missing_required(mapping)
    if missing:
        notes.append(f"partial rig: not driven (no bone mapped): {', '.join(missing)}")
    roles = {r for p in parts for r in PARTS[p] if r in mapping}
    constrained = [f"{mapping[r]} ({', '.join(c.name for c in pb.constraints)})"
                   for r in sorted(roles) if (pb := armature_obj.pose.bones.get(mapping[r])) is not None
                   and any(c.enabled and c.influence > 0 for c in pb.constraints)]
    if constrained:
        notes.append("constraints on these driven bones were kept and may override the generated motion: "
                     + "; ".join(constrained))
    world = armature_obj.matrix_basis  # from the object's own properties: matrix_world may not be updated yet
    if armature_obj.parent is not None:
        world = armature_obj.parent.matrix_world @ armature_obj.matrix_parent_inverse @ world
    scale = np.array(world.to_scale())
    if np.ptp(scale) > 1e-4 * np.abs(scale).max():
        notes.append(f"{armature_obj.name!r} has non-uniform scale ({', '.join(f'{v:g}' for v in scale)}): the "
                     "motion is keyed in the rig's own space and shows stretched like the rig; apply the scale "
                     "(Object > Apply > Scale) for undistorted directions")
    return notes
