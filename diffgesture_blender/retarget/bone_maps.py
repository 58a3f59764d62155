"""Bone maps on armature objects: detect, validate, store with the .blend, save to and load from a file.

A bone map is plain data, {role: bone name} (roles: roles.ROLES). These are the only functions that read the
armature for maps; detection and matching themselves are pure (detect.py, presets.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import presets, rigify
from .detect import Detection, detect_rig, hierarchy_problems
from .frame import world_matrix
from .roles import TABLE, missing_required  # noqa: F401  (missing_required: part of the maps API)

BONE_MAP_PROPERTY = "diffgesture_bone_map"


def parents(armature_obj) -> dict[str, str | None]:
    """Bone -> parent name as roles see it (a Rigify rig's ORG bones under their metarig parents)."""
    if rigify.is_rigify(armature_obj):
        return rigify.parents(armature_obj)
    return {b.name: (b.parent.name if b.parent else None) for b in armature_obj.data.bones}


def detect(armature_obj) -> Detection:
    """Auto-detect the rig family of an armature object and its bone map (names, then structure in world space)."""
    m = np.array(world_matrix(armature_obj))
    bones = armature_obj.data.bones
    heads = {b.name: m[:3, :3] @ np.array(b.head_local) + m[:3, 3] for b in bones}
    tails = {b.name: m[:3, :3] @ np.array(b.tail_local) + m[:3, 3] for b in bones}
    return detect_rig(parents(armature_obj), heads, tails)


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


def save_file(armature_obj, path: str | Path, mapping: dict[str, str] | None = None) -> None:
    """Write the armature's map (given, stored or detected) to a bone-map file."""
    detection = detect(armature_obj)
    presets.write_file(path, mapping or get_bone_map(armature_obj) or detection.mapping, detection.preset)
