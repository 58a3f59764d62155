"""The solver: local bone rotations that aim each driven role's segment at its target (pure numpy, armature space).

Per frame, parents first, each driven role aims the line from its bone's head to the head of the next mapped joint
(roles.end_joint), whatever the bone's own axis, so rigs whose bones point across their limbs (FBX without automatic
bone orientation) are aimed like any other. A leaf (the head, a hand without fingers, a fingertip) has no next joint,
and its tail is wherever the importer put it (FBX: along +Y or across the limb; a BVH End Site of zero length: a
0.001 stub), so its rest direction comes from the character and the rest pose instead (`leaf_directions`): the
character's up for the head, the line from the joint above for a limb (the forearm's for a hand). The swing is the
shortest one from the pose the bone has under its posed parent with an identity local rotation, so rolls, T/A-poses
and twist bones do not matter.
Chains ('spine', 'neck') spread the swing evenly over their mapped bones, then the whole chain is aimed exactly.
Twists: the hand turns about its segment so the index-to-pinky line matches the palm, the head about its own axis
to face the nose. Bones between mapped ones (twist or helper bones) keep their current local rotation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quat import IDENTITY, Y, qbetween, qconj, qmul, qpow, qrot, twist_onto, unit
from .roles import PARTS, TABLE, end_joint, mapped_above


@dataclass
class RigRest:
    """What the solver needs from an armature, in armature space: bones parents first, rest and current pose."""

    order: list[str]
    parent: dict[str, str | None]
    rest: dict[str, np.ndarray]  # rest orientation quaternion (bone.matrix_local)
    head: dict[str, np.ndarray]
    length: dict[str, float]
    basis: dict[str, np.ndarray]  # current local rotation (pose_bone.matrix_basis), kept on undriven bones


@dataclass
class Segment:
    """Bones posed together: path from the first driven bone down to the joint that ends the segment."""

    path: list[str]
    driven: set[str]
    end: str | None  # the bone whose head ends the segment, or None: the tail of path[-1]
    target: str
    twist: tuple[str, str] | None = None  # (bone, 'palm' or 'face')


def driven_roles(mapping: dict[str, str], tg: dict[str, np.ndarray], parts: set[str]) -> set[str]:
    """Mapped roles that the chosen body parts and the skeleton's data can drive."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown body parts {sorted(unknown)}; known: {sorted(PARTS)}")
    return {r for p in parts for r in PARTS[p] if r in mapping and TABLE[r].target in tg}


def segments(rig: RigRest, mapping: dict[str, str], driven: set[str]) -> dict[str, Segment]:
    """The segments to pose, keyed by their first bone; chain roles share one segment."""
    groups: dict[str, list[str]] = {}
    for role in TABLE:  # table order: from the hips outwards
        if role in driven:
            groups.setdefault(TABLE[role].chain or role, []).append(role)
    out = {}
    for key, roles in groups.items():
        bones = [mapping[r] for r in roles]
        end_role = end_joint(roles[-1], mapping)
        end = mapping[end_role] if end_role else None
        path = [rig.parent[end] if end else bones[-1]]
        while path[-1] != bones[0]:
            path.append(rig.parent[path[-1]])
        twist = next(((mapping[r], TABLE[r].twist) for r in roles if TABLE[r].twist), None)
        out[bones[0]] = Segment(path[::-1], set(bones), end, TABLE[roles[0]].target, twist)
    return out


def _line_from_above(rig: RigRest, mapping: dict[str, str], role: str) -> np.ndarray | None:
    """The rest line to the head of a role's bone from the nearest mapped joint above that is apart from it."""
    above = mapped_above(role, mapping)
    while above is not None:
        step = rig.head[mapping[role]] - rig.head[mapping[above]]
        if np.linalg.norm(step) > 1e-6:
            return step
        above = mapped_above(above, mapping)
    return None


def leaf_directions(rig: RigRest, mapping: dict[str, str], driven: set[str], up: np.ndarray) -> dict[str, np.ndarray]:
    """Bone -> rest vector (in its own frame) standing for the tail of each driven leaf: along the character's up
    (armature space) for a centre role, else along the line from the nearest mapped joint above that is apart from
    it; as long as the bone, unless the bone is under a quarter of that line (a zero-length BVH End Site's 0.001
    tail), then as long as the line. The bone's own tail only when no joint above is apart from it."""
    out = {}
    for role in driven:
        if end_joint(role, mapping) is not None:
            continue
        bone, step = mapping[role], _line_from_above(rig, mapping, role)
        if step is None:
            out[bone] = Y * rig.length[bone]
            continue
        direction = unit(np.asarray(up, dtype=np.float64)) if TABLE[role].part == "spine" else unit(step)
        span = float(np.linalg.norm(step))
        out[bone] = qrot(qconj(rig.rest[bone]), direction) * (rig.length[bone] if rig.length[bone] >= 0.25 * span
                                                               else span)
    return out


def solve(rig: RigRest, mapping: dict[str, str], driven: set[str], tg: dict[str, np.ndarray],
          frame: np.ndarray) -> dict[str, np.ndarray]:
    """Local rotations (frames, 4) of the driven bones; targets tg and the character frame (armature from canonical,
    3x3) in armature space."""
    n = len(next(iter(tg.values())))
    forward, leaf = frame @ np.array([0.0, -1.0, 0.0]), leaf_directions(rig, mapping, driven, frame[:, 2])
    world: dict[str, np.ndarray] = {}
    local: dict[str, np.ndarray] = {}
    under: dict[str, np.ndarray] = {}  # orientation under the posed parent with an identity local rotation
    identity = np.broadcast_to(IDENTITY, (n, 4))
    todo = segments(rig, mapping, driven)
    needed = set()
    for seg in todo.values():
        b = seg.path[-1]
        while b and b not in needed:
            needed.add(b)
            b = rig.parent[b]

    def offset(a: str, b: str) -> np.ndarray:
        """Rest vector from the head of a to the head of b, in a's own frame."""
        return qrot(qconj(rig.rest[a]), rig.head[b] - rig.head[a])

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

    def vector(path: list[str], end: str | None) -> np.ndarray:
        """Posed vector from the head of path[0], through the bones of the path, to the end joint (or the leaf's)."""
        v = sum((qrot(world[a], offset(a, b)) for a, b in zip(path, path[1:])), np.zeros((n, 3)))
        last = path[-1]
        return v + qrot(world[last], offset(last, end) if end else leaf.get(last, Y * rig.length[last]))

    def turn(q: np.ndarray, bones: list[str]) -> None:
        """Rotate bones[0] and the posed bones below it on its path (bones[1:]) by the world rotation q."""
        for b in bones:
            world[b] = qmul(q, world[b])
            if b != bones[0]:
                under[b] = qmul(q, under[b])
        local[bones[0]] = qmul(qconj(under[bones[0]]), world[bones[0]])

    def twist_reference(b: str, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(vector in b's rest frame, its target) that turns b about its segment, if the data are there."""
        side = next(r for r in driven if mapping[r] == b).split("_", 1)[0]
        if kind == "face" and "head_forward" in tg:
            return qrot(qconj(rig.rest[b]), forward), tg["head_forward"]
        fingers = {f"{side}_index1", f"{side}_pinky1"}
        if kind == "palm" and f"{side}_palm" in tg and fingers <= set(mapping):
            across = rig.head[mapping[f"{side}_index1"]] - rig.head[mapping[f"{side}_pinky1"]]
            return qrot(qconj(rig.rest[b]), across), tg[f"{side}_palm"]
        return None

    def pose(seg: Segment) -> None:
        """Aim the segment (a chain shares the swing first), then apply its twist."""
        for b in seg.path:
            place(b, identity if b in seg.driven else None)
        if len(seg.driven) > 1:
            share = qpow(qbetween(vector(seg.path, seg.end), tg[seg.target]), 1.0 / len(seg.driven))
            for b in seg.path:
                place(b, share if b in seg.driven else None)
        turn(qbetween(vector(seg.path, seg.end), tg[seg.target]), seg.path)
        reference = twist_reference(*seg.twist) if seg.twist else None
        if reference is None:
            return
        b = seg.twist[0]
        below = seg.path[seg.path.index(b):]  # the twist turns b about its own segment, the bones below it along
        axis = vector(below, seg.end) if b == seg.path[0] else qrot(world[b], leaf.get(b, Y))
        axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
        turn(twist_onto(axis, qrot(world[b], reference[0]), reference[1]), below)

    for b in rig.order:
        if b not in needed or b in world:
            continue
        if b in todo:
            pose(todo[b])
        else:
            place(b, None)
    return local
