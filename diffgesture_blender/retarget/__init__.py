"""Retargeting canonical direction vectors onto humanoid armatures, and the bone maps that say which bone is what.

roles.py      the one role table (segments, chains, twists, parts, required roles)
names.py      bone names parsed into prefix (ORG-/MCH-), side and base, rig prefixes (Character1_, Bip01 ...) dropped
presets.py    bone-map files: the shipped presets (presets/*.json) and users' saved maps
detect.py     auto-detection (pure): preset names checked against the hierarchy, vetoed and filled by structure
structure.py  the humanoid found from the hierarchy and rest geometry alone, fingers included (pure)
vrm.py        the VRM humanoid bone table a VRM import carries (VRM add-on's layout)
bone_maps.py  maps on armature objects: detect (kept until the rig changes), validate, store, load/save files
quat.py       quaternion and direction math
frame.py      target vectors per role and the character frame read from the rig in world space
solve.py      the joint-to-joint solver (pure numpy)
keying.py     reading the armature and keying a new action (bpy)
notes.py      warnings for the user (skipped parts, constraints, drivers, scale)
rigify.py     Rigify rigs: ORG bones in the metarig's hierarchy, keys on the FK and neck controls, the held switches

The scene-writing code calls `apply_motion(...)`, `rekey_range(...)` and `rig_notes(...)`; requests, the panel,
operators and headless use `bone_maps` (detect, validate, current_map, get/set_bone_map, load_file/save_file).
"""
from . import bone_maps
from .keying import apply_motion, rekey_range
from .notes import rig_notes
from .roles import PARTS, ROLES

__all__ = ["PARTS", "ROLES", "apply_motion", "bone_maps", "rekey_range", "rig_notes"]
