"""From generated directions to what the solver aims at: target vectors per role and the character's own frame.

The canonical frame of the generated motion is right-handed with +Z up, facing -Y, the character's left at +X. The
rig's frame is read from the rig itself, in world space: up from the hips to the head (or neck), left from the
right to the left shoulder (made perpendicular to up), forward = left x up. So a rig stored Y-up under an object
turned 90 degrees (glTF/FBX imports), facing any way, at any scale, gets the same motion in the world.
"""
from __future__ import annotations

import numpy as np

from ..shared import skeleton as sk
from .quat import unit
from .roles import FINGERS, SIDES


def targets(dirs: np.ndarray, skel: sk.Skeleton) -> dict[str, np.ndarray]:
    """Unit target vectors (frames, 3) per Role.target key, plus twist references 'head_forward' and '<side>_palm'."""
    d = {b: dirs[:, i] for i, b in enumerate(skel.bones)}
    length = dict(zip(skel.bones, skel.lengths))
    out = {"spine": d["spine"], "head_forward": d["neck_nose"]}
    if "nose_head" in d:  # neck -> head top
        out["neck"] = length["neck_nose"] * d["neck_nose"] + length["nose_head"] * d["nose_head"]
    else:  # neck -> centre of eyes and ears
        eyes = [length[f"nose_{s}_eye"] * d[f"nose_{s}_eye"] for s in SIDES]
        ears = [e + length[f"{s}_eye_ear"] * d[f"{s}_eye_ear"] for e, s in zip(eyes, SIDES)]
        out["neck"] = length["neck_nose"] * d["neck_nose"] + sum(eyes + ears) / 4.0
    for side in SIDES:
        for r in ("clavicle", "upper_arm", "forearm"):
            out[f"{side}_{r}"] = d[f"{side}_{r}"]
        if f"{side}_middle_base" in d:
            out[f"{side}_hand"] = d[f"{side}_middle_base"]
            out[f"{side}_palm"] = (length[f"{side}_index_base"] * d[f"{side}_index_base"]
                                   - length[f"{side}_pinky_base"] * d[f"{side}_pinky_base"])
            for f in FINGERS:
                for i in (1, 2, 3):  # rig segment 3 follows the skeleton's segment 2
                    out[f"{side}_{f}{i}"] = d[f"{side}_{f}{min(i, 2)}"]
    return {k: unit(v.astype(np.float64)) for k, v in out.items()}


def target_keys(skel: sk.Skeleton) -> set[str]:
    """The target keys a skeleton provides (so, with roles.TABLE, which roles it can drive)."""
    return set(targets(sk.poses_to_canonical(np.zeros((1, skel.pose_dim)), skel), skel))


def rig_axes(heads: dict[str, np.ndarray], mapping: dict[str, str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The rig's up (hips -> head) and left (right -> left arm joint) from mapped bone heads; None where unmapped."""
    def first(roles: tuple[str, ...]) -> np.ndarray | None:
        return next((heads[mapping[r]] for r in roles if r in mapping), None)

    bottom, top = first(("hips", "spine", "spine1", "spine2")), first(("head", "neck1", "neck"))
    up = top - bottom if bottom is not None and top is not None and np.linalg.norm(top - bottom) > 1e-9 else None
    left = None
    for role in ("upper_arm", "clavicle", "forearm", "hand"):
        a, b = mapping.get(f"left_{role}"), mapping.get(f"right_{role}")
        if a and b and np.linalg.norm(heads[a] - heads[b]) > 1e-9:
            left = heads[a] - heads[b]
            break
    return up, left


def snap(v: np.ndarray, axes: np.ndarray, degrees: float = 10.0) -> np.ndarray:
    """v, or the nearest of the +-columns of axes (3x3, orthonormal) when it is within `degrees` of v."""
    v = unit(np.asarray(v, dtype=np.float64))
    cos = axes.T @ v
    k = int(np.argmax(np.abs(cos)))
    return np.sign(cos[k]) * axes[:, k] if abs(cos[k]) >= np.cos(np.radians(degrees)) else v


STANDING_DEGREES = 45.0  # the shoulders' line at least this far from the spine: a figure that stands (or lies) whole
SHOULDERS_APART = 0.05  # the first pair of arm joints at least this fraction of the hips-to-head line apart


def check_standing(up: np.ndarray | None, left: np.ndarray | None) -> None:
    """Raise ValueError when measured axes (rig_axes) cannot be a standing figure's: left and right arm joints nearly
    at one point (a motion-capture zero pose laid out along one line, its sides apart only by its numbers' noise)."""
    if up is not None and left is not None and np.linalg.norm(left) < SHOULDERS_APART * np.linalg.norm(up):
        raise ValueError(f"its rest pose is not a standing figure: its left and right arm joints are "
                         f"{np.linalg.norm(left) / np.linalg.norm(up):.2g} of its hips-to-head length apart (a "
                         "motion-capture zero pose laid out along one line?)")


def character_frame(up: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Rotation (3x3) taking canonical vectors to the rig's: columns left, back, up; left is made perpendicular.

    Refuses a rest pose whose shoulders' line runs near its spine (a motion-capture zero pose laid out along one
    line): no frame read from it is the character's."""
    z = unit(np.asarray(up, dtype=np.float64))
    x = np.asarray(left, dtype=np.float64) - np.dot(left, z) * z
    if np.linalg.norm(x) < np.sin(np.radians(STANDING_DEGREES)) * np.linalg.norm(left):
        raise ValueError(f"its rest pose is not a standing figure: the line between its shoulders runs within "
                         f"{STANDING_DEGREES:g} degrees of the line from its hips to its head (a motion-capture zero "
                         "pose laid out along one line?)")
    x = unit(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def world_axes(obj, heads: dict[str, np.ndarray], mapping: dict[str, str]) -> tuple[np.ndarray | None, ...]:
    """The rig's up and left (rig_axes) in world space from armature-space bone heads, and the object's world
    rotation (3x3, its scale taken out)."""
    world = world_matrix(obj)
    m, rot = np.array(world), np.array(world.to_quaternion().to_matrix())
    heads_w = {mapping[r]: m[:3, :3] @ heads[mapping[r]] + m[:3, 3] for r in mapping if mapping[r] in heads}
    return (*rig_axes(heads_w, mapping), rot)


def world_matrix(obj):
    """The object's world matrix from its own and its parents' properties (matrix_world may not be updated yet)."""
    m = obj.matrix_basis
    return world_matrix(obj.parent) @ obj.matrix_parent_inverse @ m if obj.parent is not None else m
