"""The humanoid bone table a VRM import carries, as the VRM add-on for Blender stores it (pure: reads mappings).

The add-on (saturday06/VRM-Addon-for-Blender) keeps it on the armature data under 'vrm_addon_extension': VRM 0.x
as vrm0.humanoid.human_bones, a list of {'bone': 'leftUpperArm', 'node': {'bone_uuid': ...}}; VRM 1.0 as
vrm1.humanoid.human_bones.<left_upper_arm>.node.bone_uuid. A node names its bone by the uuid the add-on writes on
each bone (bone.vrm_addon_extension.uuid), so the table survives renaming; the add-on's 'bone_name' is computed from
it, not stored. Without the add-on installed all of this stays readable as plain ID properties; with it installed,
Blender 5.0 keeps property-group data apart from ID properties, so it is read through the registered properties
(`field` takes either).
"""
from __future__ import annotations

from typing import Any

from .roles import FINGERS, SIDES

EXTENSION = "vrm_addon_extension"
_CENTRE = {"hips": "hips", "spine": "spine", "spine1": "chest", "spine2": "upperChest", "neck": "neck", "head": "head"}
_ARM = {"clavicle": "Shoulder", "upper_arm": "UpperArm", "forearm": "LowerArm", "hand": "Hand"}
_PHALANGES = {0: ("Proximal", "Intermediate", "Distal"), 1: ("Metacarpal", "Proximal", "Distal")}  # VRM 1.0 thumbs


def _names(version: int) -> dict[str, str]:
    """Our role -> the VRM humanoid bone name (VRM 0.x camelCase, VRM 1.0 snake_case)."""
    out = dict(_CENTRE)
    for side in SIDES:
        out.update({f"{side}_{r}": side + n for r, n in _ARM.items()})
        for f in FINGERS:
            parts = _PHALANGES[version if f == "thumb" else 0]
            finger = "Little" if f == "pinky" else f.capitalize()
            out.update({f"{side}_{f}{i}": f"{side}{finger}{p}" for i, p in enumerate(parts, start=1)})
    if version == 1:
        out = {r: "".join("_" + c.lower() if c.isupper() else c for c in n) for r, n in out.items()}
    return out


VRM0_NAMES, VRM1_NAMES = _names(0), _names(1)


def field(data: Any, *keys: str) -> Any:
    """data.keys[0].keys[1]...: ID properties by key, registered properties (bpy structs) by attribute; None when
    missing."""
    for k in keys:
        if data is None:
            return None
        data = getattr(data, k, None) if hasattr(data, "bl_rna") else data.get(k)
    return data


def humanoid_map(extension: Any, bone_uuids: dict[str, str]) -> dict[str, str]:
    """{role: bone} from the add-on's armature extension and {uuid: bone name}; the VRM 1.0 table when it names more
    bones than the 0.x one; {} when there is none."""
    if extension is None:
        return {}

    def bone(node: Any) -> str | None:
        return bone_uuids.get(str(field(node, "bone_uuid") or ""))

    by_name0 = {str(field(hb, "bone")): bone(field(hb, "node"))
                for hb in field(extension, "vrm0", "humanoid", "human_bones") or []}
    human1 = field(extension, "vrm1", "humanoid", "human_bones")
    maps = [{r: by_name0.get(n) for r, n in VRM0_NAMES.items()},
            {r: bone(field(human1, n, "node")) for r, n in VRM1_NAMES.items()}]
    maps = [{r: b for r, b in m.items() if b} for m in maps]
    return max(maps[::-1], key=len)
