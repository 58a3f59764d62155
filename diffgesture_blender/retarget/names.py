"""Bone names parsed into parts: a generator prefix (Rigify's ORG-/MCH-), the side and the base.

Two names are the same bone of two rigs when their keys (prefix, side, base) are equal: a 'namespace:' prefix
(Mixamo's mixamorig:), a rig's own prefix (Maya HumanIK's Character1_, 3ds Max Biped's Bip01 / Bip001, Valve's
ValveBiped.Bip01_, Character Creator's CC_Base_, Rigify's DEF- on a deform-only export), case and separators do not
count, so 'upper_arm.L', 'UpperArm_L', 'upperArmLeft' and 'Character1_LeftUpperArm' agree. `shared_prefix` finds a
prefix that every bone of one rig carries (its own character name), which matching may also drop.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SIDES = {"l": "L", "left": "L", "r": "R", "right": "R"}
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}
PREFIXES = ("ORG", "MCH")  # Rigify's generated-bone prefixes that are not the bone itself; controls have none
RIG_PREFIX = re.compile(r"^(?:ValveBiped\.)?(?:Bip0*1[ _]|Character\d*_|CC_Base_|DEF[-_])", re.IGNORECASE)
_SEPARATORS = "_:. -"


class BoneName(NamedTuple):
    prefix: str  # 'ORG', 'MCH' or ''
    side: str  # 'L', 'R' or ''
    base: str  # lower case, no separators, no side marker


def parse(name: str) -> BoneName:
    """Split a bone name into its generator prefix, side and base."""
    name = RIG_PREFIX.sub("", name.rsplit(":", 1)[-1])
    prefix = next((p for p in PREFIXES if name.startswith((p + "-", p + "_"))), "")
    tokens = [t.lower() for t in _TOKEN.findall(name[len(prefix) + 1:] if prefix else name)]
    side = next((_SIDES[t] for t in tokens if t in _SIDES), "")
    if side:
        tokens.remove(next(t for t in tokens if t in _SIDES))
    return BoneName(prefix, side, "".join(tokens))


def shared_prefix(names: list[str]) -> str:
    """The longest prefix ending at a separator that every one of several names carries and none is made of ('' if
    none): a rig's own character name, such as 'Hero_' on every bone; never a generator prefix (Rigify's ORG- bones
    alone are still ORG bones)."""
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    common = first[:next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), len(first))]
    cut = max(common.rfind(c) for c in _SEPARATORS) + 1
    if not cut or common[:cut].rstrip(_SEPARATORS).upper() in PREFIXES or any(len(n) <= cut for n in names):
        return ""
    return common[:cut]


def mirror_name(name: str) -> str:
    """The same bone name on the other side (first side marker swapped, its case kept)."""
    for m in _TOKEN.finditer(name):
        low = m.group().lower()
        if low in _OTHER_SIDE:
            other = _OTHER_SIDE[low]
            other = other.upper() if m.group().isupper() else other.capitalize() if m.group()[0].isupper() else other
            return name[:m.start()] + other + name[m.end():]
    return name
