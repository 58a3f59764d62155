"""Warnings about what a generation will not do as the user may expect: skipped parts, constraints, drivers, scale."""
from __future__ import annotations

import numpy as np

from ..shared import skeleton as sk
from . import rigify
from .frame import STANDING_DEGREES, target_keys, world_axes, world_matrix
from .roles import PARTS, TABLE, folded, missing_required


def rig_notes(armature_obj, mapping: dict[str, str], skeleton_name: str, parts: set[str]) -> list[str]:
    """Lines for the panel and the summary; empty when the motion will show as generated."""
    skel = sk.get_skeleton(skeleton_name)
    notes = []
    rig_fingers = any(r in mapping for r in PARTS["fingers"])
    keys = target_keys(skel)
    skel_fingers = any(TABLE[r].target in keys for r in PARTS["fingers"])
    if "fingers" in parts and not skel_fingers and rig_fingers:
        notes.append(f"fingers were not driven: the {skel.name} skeleton has no fingers (use a TED Expressive "
                     "checkpoint for finger motion)")
    elif "fingers" in parts and skel_fingers and not rig_fingers:
        notes.append(f"fingers were skipped: {armature_obj.name!r} has no finger bones mapped")
    missing = missing_required(mapping)
    if missing:
        notes.append(f"partial rig: not driven (no bone mapped): {', '.join(missing)}")
    if mapping and (spared := folded(mapping, parts)):
        notes.append("; ".join(spared))
    bones = [mapping[r] for r in sorted({r for p in parts for r in PARTS[p] if r in mapping})]
    if rigify.is_rigify(armature_obj):
        seen, _, controls = rigify.view(armature_obj, mapping)
        bones = [seen[r] for r in sorted({r for p in parts for r in PARTS[p] if r in seen})]
        unkeyed = [b for b in bones if b not in controls]
        notes.append("Rigify rig: the FK controls (and the neck control) were keyed, and the arms' IK/FK switch set "
                     "to FK and the neck's and head's follow to 1, inside the generated action"
                     + (f"; no control matches {', '.join(unkeyed)}, left to follow" if unkeyed else ""))
        bones = [controls[b] for b in bones if b in controls]
    constrained = [f"{b} ({', '.join(c.name for c in pb.constraints)})" for b in bones
                   if (pb := armature_obj.pose.bones.get(b)) is not None
                   and any(c.enabled and c.influence > 0 for c in pb.constraints)]
    if constrained:
        notes.append("constraints on these driven bones were kept and may override the generated motion: "
                     + "; ".join(constrained))
    driven_paths = {f'pose.bones["{b}"].{p}': b for b in bones
                    for p in ("rotation_quaternion", "rotation_euler", "rotation_axis_angle")}
    anim = armature_obj.animation_data
    with_drivers = sorted({driven_paths[d.data_path] for d in (anim.drivers if anim else ())
                           if d.data_path in driven_paths and not d.mute})
    if with_drivers:
        notes.append("drivers on the rotation of these driven bones override the generated keys (remove or mute "
                     "them to see the motion): " + ", ".join(with_drivers))
    heads = {b.name: np.array(b.head_local) for b in armature_obj.data.bones}
    up = world_axes(armature_obj, heads, {r: b for r, b in mapping.items() if b in heads})[0]
    tilt = 0.0 if up is None else float(np.degrees(np.arccos(np.clip(up[2] / np.linalg.norm(up), -1.0, 1.0))))
    if tilt > STANDING_DEGREES:
        notes.append(f"{armature_obj.name!r} does not stand upright in the world (its hips-to-head line is {tilt:.0f} "
                     "degrees from the world's up): the motion is keyed in the character's own frame and lies as its "
                     "rest pose does; if that is not meant, pose it standing and apply the pose as rest pose")
    scale = np.array(world_matrix(armature_obj).to_scale())
    if np.ptp(scale) > 1e-4 * np.abs(scale).max():
        notes.append(f"{armature_obj.name!r} has non-uniform scale ({', '.join(f'{v:g}' for v in scale)}): the "
                     "motion is keyed in the rig's own space and shows stretched like the rig; apply the scale "
                     "(Object > Apply > Scale) for undistorted directions")
    return notes
