"""Bone maps on armature objects: detect, validate, store with the .blend, save to and load from a file.

A bone map is plain data, {role: bone name} (roles: roles.ROLES). These are the only functions that read the
armature for maps; detection and matching themselves are pure (detect.py, presets.py).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..session import SESSION
from ..shared import files
from . import presets, rigify, vrm
from .detect import Detection, detect_rig, hierarchy_problems
from .frame import world_matrix
from .roles import TABLE, missing_required  # noqa: F401  (missing_required: part of the maps API)

BONE_MAP_PROPERTY = "diffgesture_bone_map"


def parents(armature_obj) -> dict[str, str | None]:
    """Bone -> parent name as roles see it (a Rigify rig's ORG bones under their metarig parents)."""
    if rigify.is_rigify(armature_obj):
        return rigify.parents(armature_obj)
    return {b.name: (b.parent.name if b.parent else None) for b in armature_obj.data.bones}


def vrm_table(armature_obj) -> dict[str, str]:
    """{role: bone} from the VRM humanoid table the import stored on the armature (vrm.py), {} if none."""
    data = armature_obj.data
    registered = hasattr(data, vrm.EXTENSION)  # the add-on is installed: read its properties, not the ID properties
    extension = getattr(data, vrm.EXTENSION) if registered else data.get(vrm.EXTENSION)
    if extension is None:
        return {}
    uuids = {str(u): b.name for b in data.bones
             if (u := vrm.field(getattr(b, vrm.EXTENSION) if registered else b.get(vrm.EXTENSION), "uuid"))}
    return vrm.humanoid_map(extension, uuids)


def rig_key(armature_obj) -> tuple:
    """Everything detection reads, compared cheaply: bone names and parents, rest heads and tails, the object's world
    matrix, Rigify's stamp and the VRM humanoid table. It changes whenever a detection could."""
    bones = armature_obj.data.bones
    ends = np.empty(6 * len(bones), dtype=np.float32)
    bones.foreach_get("head_local", ends[:3 * len(bones)])
    bones.foreach_get("tail_local", ends[3 * len(bones):])
    return (armature_obj.data.name, tuple(b.name for b in bones),
            tuple((p := b.parent) and p.name for b in bones), ends.tobytes(),
            tuple(tuple(row) for row in world_matrix(armature_obj)), "rig_id" in armature_obj.data,
            tuple(sorted(vrm_table(armature_obj).items())))


def detect(armature_obj, *, fresh: bool = False) -> Detection:
    """Auto-detect the rig family of an armature object and its bone map (the VRM humanoid table when the import
    carries one, else names; then the structure in world space). The result is kept per object until its rig_key
    changes (fresh: detect again anyway); callers get their own copy."""
    key = rig_key(armature_obj)
    kept = SESSION.detections.get(armature_obj.name)  # the panel redraws often
    if fresh or kept is None or kept[0] != key:
        tree = parents(armature_obj)
        if rigify.is_rigify(armature_obj):  # the roles are ORG bones: the metarig's copy, without controls and MCH
            tree = {b: p for b, p in tree.items() if b.startswith("ORG-")}
        m = np.array(world_matrix(armature_obj))
        bones = [armature_obj.data.bones[b] for b in tree]
        heads = {b.name: m[:3, :3] @ np.array(b.head_local) + m[:3, 3] for b in bones}
        tails = {b.name: m[:3, :3] @ np.array(b.tail_local) + m[:3, 3] for b in bones}
        found = detect_rig(tree, heads, tails, vrm_table(armature_obj))
        kept = SESSION.detections[armature_obj.name] = key, found
    d = kept[1]
    return replace(d, mapping=dict(d.mapping), missing_required=list(d.missing_required), vetoed=list(d.vetoed))


def get_bone_map(armature_obj) -> dict[str, str]:
    """The user-editable bone map stored on the object (saved with the .blend), {} if none."""
    stored = armature_obj.get(BONE_MAP_PROPERTY)
    return {str(k): str(v) for k, v in stored.items()} if stored else {}


def set_bone_map(armature_obj, mapping: dict[str, str]) -> None:
    """Store a bone map on the object as an ID property."""
    armature_obj[BONE_MAP_PROPERTY] = {k: v for k, v in mapping.items() if v}


def current_map(armature_obj) -> dict[str, str]:
    """The map a generation uses: the stored one, else the detected one."""
    return get_bone_map(armature_obj) or detect(armature_obj).mapping


def validate(armature_obj, mapping: dict[str, str], partial: bool = False) -> list[str]:
    """Problems that make a bone map unusable on this armature; empty when it can be used.

    partial: the user allows driving only the mapped bones, so missing required roles are not problems (an empty
    map still is)."""
    tree = parents(armature_obj)
    problems = [f"unknown role {r!r}" for r in mapping if r not in TABLE]
    problems += [f"{r}: no bone named {b!r}" for r, b in mapping.items() if b not in tree]
    if not partial:
        problems += [f"missing required bone for {r}" for r in missing_required(mapping)]
    elif not mapping:
        problems.append("no bone is mapped to any role")
    used = list(mapping.values())
    problems += [f"bone {b!r} is mapped to several roles" for b in sorted(set(used)) if used.count(b) > 1]
    known = {r: b for r, b in mapping.items() if b in tree and r in TABLE}
    return problems + [msg for _, msg in hierarchy_problems(tree, known)]


def load_file(armature_obj, path: str | Path) -> dict[str, str]:
    """The map a bone-map file gives on this armature (names matched exactly, else by key); raises ValueError."""
    family, aliases, mirror = presets.read_file(path)
    mapping = presets.match(list(parents(armature_obj)), aliases, mirror)
    if not mapping:
        raise presets.BoneMapFileError(f"no bone of {armature_obj.name!r} matches the bone map {path}")
    return mapping


def save_file(armature_obj, path: str | Path, mapping: dict[str, str] | None = None, keep: list | tuple = ()) -> None:
    """Write the armature's map (given, stored or detected) to a bone-map file: a new file or another bone map,
    never one of `keep` (shared.files.check_output; ValueError saying why)."""
    files.check_output(path, keep, ours=presets.is_bone_map_file, what="the bone map file",
                       kind="a DiffGesture bone map")
    detection = detect(armature_obj)
    presets.write_file(path, mapping or get_bone_map(armature_obj) or detection.mapping, detection.preset)
