"""Bone maps: rig-independent roles, per-family presets, name normalisation and auto-detection.

A bone map is plain data, {role: bone name}. Presets list the names each rig family uses for the centre and the
LEFT side only; the right side is found by matching the same normalised name with the other side marker, so the
character's anatomical left always receives the skeleton's left-arm vectors (mirror-safety rests on the rig's own
L/R naming, which every supported family ties to the character's left, i.e. +X when it faces -Y).
Only `detect`, `get_bone_map`, `set_bone_map` and `validate` read the armature; the rest is pure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
SPINE_ROLES = ["spine", "spine1", "spine2", "spine3", "spine4"]  # from the hips upwards
NECK_ROLES = ["neck", "neck1", "head"]  # the neck chain ends with the head
ARM_ROLES = ["clavicle", "upper_arm", "forearm", "hand"]
FINGER_ROLES = [f"{f}{i}" for f in FINGERS for i in (1, 2, 3)]

ROLES: list[str] = ["hips", *SPINE_ROLES, *NECK_ROLES] + [
    f"{side}_{r}" for side in ("left", "right") for r in (*ARM_ROLES, *FINGER_ROLES)]
REQUIRED_ROLES: list[str] = ["spine", "neck", "head", "left_upper_arm", "left_forearm", "right_upper_arm",
                             "right_forearm"]
BONE_MAP_PROPERTY = "diffgesture_bone_map"


def _fingers(pattern: str, names: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Finger roles from a name pattern with {F} (finger name) and {i} (1..3)."""
    names = names or {}
    return {f"left_{f}{i}": [pattern.format(F=names.get(f, f), i=i)] for f in FINGERS for i in (1, 2, 3)}


_UE4 = {  # the Unreal Engine 4 mannequin
    "hips": ["pelvis"], "spine": ["spine_01"], "spine1": ["spine_02"], "spine2": ["spine_03"],
    "neck": ["neck_01"], "head": ["head"],
    "left_clavicle": ["clavicle_l"], "left_upper_arm": ["upperarm_l"], "left_forearm": ["lowerarm_l"],
    "left_hand": ["hand_l"],
    **_fingers("{F}_0{i}_l"),
}
# role -> aliases (centre and left side only). Names are compared after `normalize`.
PRESETS: dict[str, dict[str, list[str]]] = {
    "mixamo": {
        "hips": ["Hips"], "spine": ["Spine"], "spine1": ["Spine1"], "spine2": ["Spine2"],
        "neck": ["Neck"], "head": ["Head"],
        "left_clavicle": ["LeftShoulder"], "left_upper_arm": ["LeftArm"], "left_forearm": ["LeftForeArm"],
        "left_hand": ["LeftHand"],
        **_fingers("LeftHand{F}{i}", {f: f.capitalize() for f in FINGERS}),
    },
    "rigify": {
        "hips": ["torso"], "spine": ["spine_fk.001"], "spine1": ["spine_fk.002"], "spine2": ["spine_fk.003"],
        "neck": ["neck"], "head": ["head"],
        "left_clavicle": ["shoulder.L"], "left_upper_arm": ["upper_arm_fk.L"], "left_forearm": ["forearm_fk.L"],
        "left_hand": ["hand_fk.L"],
        **_fingers("{F}.0{i}.L", {f: f"f_{f}" for f in FINGERS if f != "thumb"}),
    },
    "metarig": {
        "hips": ["spine"], "spine": ["spine.001"], "spine1": ["spine.002"], "spine2": ["spine.003"],
        "neck": ["spine.004"], "neck1": ["spine.005"], "head": ["spine.006"],
        "left_clavicle": ["shoulder.L"], "left_upper_arm": ["upper_arm.L"], "left_forearm": ["forearm.L"],
        "left_hand": ["hand.L"],
        **_fingers("{F}.0{i}.L", {f: f"f_{f}" for f in FINGERS if f != "thumb"}),
    },
    "ue4": _UE4,
    "ue5": {**_UE4, "spine3": ["spine_04"], "spine4": ["spine_05"], "neck1": ["neck_02"]},  # Manny: 5 spine, 2 neck
    "vrm": {  # VRoid's J_Bip names first, then VRM humanoid names (VRM 1.0 thumb names come last)
        "hips": ["J_Bip_C_Hips", "hips"], "spine": ["J_Bip_C_Spine", "spine"], "spine1": ["J_Bip_C_Chest", "chest"],
        "spine2": ["J_Bip_C_UpperChest", "upperChest"], "neck": ["J_Bip_C_Neck", "neck"],
        "head": ["J_Bip_C_Head", "head"],
        "left_clavicle": ["J_Bip_L_Shoulder", "leftShoulder"], "left_upper_arm": ["J_Bip_L_UpperArm", "leftUpperArm"],
        "left_forearm": ["J_Bip_L_LowerArm", "leftLowerArm"], "left_hand": ["J_Bip_L_Hand", "leftHand"],
        **{f"left_{f}{i}": [f"J_Bip_L_{f.capitalize() if f != 'pinky' else 'Little'}{i}",
                            f"left{f.capitalize() if f != 'pinky' else 'Little'}{seg}"]
           for f in FINGERS for i, seg in zip((1, 2, 3), ("Proximal", "Intermediate", "Distal"))},
    },
}
PRESETS["vrm"]["left_thumb1"].append("leftThumbMetacarpal")
PRESETS["vrm"]["left_thumb2"].append("leftThumbProximal")

_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SIDES = {"l": "L", "left": "L", "r": "R", "right": "R"}


def normalize(name: str) -> tuple[str, str]:
    """Bone name -> (side 'L'/'R'/'', base): drops a 'namespace:' prefix, case, separators and the side marker."""
    tokens = [t.lower() for t in _TOKEN.findall(name.rsplit(":", 1)[-1])]
    side = next((_SIDES[t] for t in tokens if t in _SIDES), "")
    if side:
        tokens.remove(next(t for t in tokens if t in _SIDES))
    return side, "".join(tokens)


def _role_keys(role: str, aliases: list[str]) -> list[tuple[str, str]]:
    """Normalised keys a role accepts; right-side roles reuse the left aliases with the side swapped."""
    keys = [normalize(a) for a in aliases]
    if role.startswith("right_"):
        keys = [("R" if s == "L" else s, b) for s, b in keys]
    return keys


def preset_aliases(preset: str) -> dict[str, list[str]]:
    """All roles of a preset (both sides), each with its left-side aliases."""
    table = PRESETS[preset]
    return {**table, **{"right_" + r[5:]: a for r, a in table.items() if r.startswith("left_")}}


def match_preset(bone_names: list[str], preset: str) -> dict[str, str]:
    """Map a preset's roles onto bone names by normalised name; earlier aliases win."""
    by_key: dict[tuple[str, str], str] = {}
    for n in bone_names:
        by_key.setdefault(normalize(n), n)
    mapping = {}
    for role, aliases in preset_aliases(preset).items():
        found = next((by_key[k] for k in _role_keys(role, aliases) if k in by_key), None)
        if found:
            mapping[role] = found
    return mapping


def hierarchy_problems(parents: dict[str, str | None], mapping: dict[str, str]) -> list[tuple[str, str]]:
    """(role, message) for mapped bones that do not from each other in the order the roles imply."""
    def ancestors(bone: str) -> set[str]:
        out = set()
        while parents.get(bone):
            bone = parents[bone]
            out.add(bone)
        return out

    chains = [SPINE_ROLES + NECK_ROLES]
    for side in ("left", "right"):
        chains.append(["spine", *[f"{side}_{r}" for r in ARM_ROLES]])
        chains += [[f"{side}_hand", *[f"{side}_{f}{i}" for i in (1, 2, 3)]] for f in FINGERS]
    problems = []
    for chain in chains:
        present = [r for r in chain if r in mapping]
        for upper, lower in zip(present, present[1:]):
            if mapping[upper] not in ancestors(mapping[lower]):
                problems.append((lower, f"{lower} ({mapping[lower]}) is not below {upper} ({mapping[upper]})"))
    return problems


def missing_required(mapping: dict[str, str]) -> list[str]:
    return [r for r in REQUIRED_ROLES if r not in mapping]


@dataclass
class Detection:
    """Result of auto-detection: the best preset, its map, coverage and a message for the user."""

    preset: str | None
    mapping: dict[str, str] = field(default_factory=dict)
    covered: int = 0
    total: int = 0
    missing_required: list[str] = field(default_factory=list)
    message: str = ""


def detect_from_names(parents: dict[str, str | None]) -> Detection:
    """Pick the preset covering the most roles with a valid hierarchy (pure: bone name -> parent name)."""
    best = Detection(None, total=len(ROLES), missing_required=list(REQUIRED_ROLES))
    for preset in PRESETS:
        mapping = match_preset(list(parents), preset)
        for role, _ in hierarchy_problems(parents, mapping):  # drop roles whose bones sit in the wrong place
            mapping.pop(role, None)
        if len(mapping) > best.covered:
            best = Detection(preset, mapping, len(mapping), len(preset_aliases(preset)), missing_required(mapping))
    if best.preset is None:
        best.message = "No known rig family recognised; map the bones by hand. Missing: " + ", ".join(
            best.missing_required)
    elif best.missing_required:
        best.message = (f"Looks like {best.preset} ({best.covered}/{best.total} roles) but these required bones are "
                        "missing: " + ", ".join(best.missing_required))
    else:
        best.message = f"Detected {best.preset}: {best.covered}/{best.total} roles mapped"
    return best


def _parents(armature_obj) -> dict[str, str | None]:
    return {b.name: (b.parent.name if b.parent else None) for b in armature_obj.data.bones}


def detect(armature_obj) -> Detection:
    """Auto-detect the rig family of an armature object and its bone map."""
    return detect_from_names(_parents(armature_obj))


def get_bone_map(armature_obj) -> dict[str, str]:
    """The user-editable bone map stored on the object (saved with the .blend), {} if none."""
    stored = armature_obj.get(BONE_MAP_PROPERTY)
    return {str(k): str(v) for k, v in stored.items()} if stored else {}


def set_bone_map(armature_obj, mapping: dict[str, str]) -> None:
    """Store a bone map on the object as an ID property."""
    armature_obj[BONE_MAP_PROPERTY] = {k: v for k, v in mapping.items() if v}


def validate(armature_obj, mapping: dict[str, str], partial: bool = False) -> list[str]:
    """Problems that make a bone map unusable on this armature; empty when it can be used.

    partial: the user allows driving only the mapped bones, so missing required roles are not problems (an empty
    map still is)."""
    parents = _parents(armature_obj)
    problems = [f"unknown role {r!r}" for r in mapping if r not in ROLES]
    problems += [f"{r}: no bone named {b!r}" for r, b in mapping.items() if b not in parents]
    if not partial:
        problems += [f"missing required bone for {r}" for r in missing_required(mapping)]
    elif not mapping:
        problems.append("no bone is mapped to any role")
    used = list(mapping.values())
    problems += [f"bone {b!r} is mapped to several roles" for b in sorted(set(used)) if used.count(b) > 1]
    known = {r: b for r, b in mapping.items() if b in parents and r in ROLES}
    return problems + [msg for _, msg in hierarchy_problems(parents, known)]


_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}


def mirror_name(name: str) -> str:
    """The same bone name on the other side (first side marker swapped, its case kept)."""
    for m in _TOKEN.finditer(name):
        low = m.group().lower()
        if low in _OTHER_SIDE:
            other = _OTHER_SIDE[low]
            other = other.upper() if m.group().isupper() else other.capitalize() if m.group()[0].isupper() else other
            return name[:m.start()] + other + name[m.end():]
    return name
