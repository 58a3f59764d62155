"""Bone names parsed into parts: a generator prefix (Rigify's ORG-/MCH-/DEF-), the side and the base.

Two names are the same bone of two rigs when their keys (prefix, side, base) are equal: a 'namespace:' prefix
(Mixamo's mixamorig:), case and separators do not count, so 'upper_arm.L', 'UpperArm_L' and 'upperArmLeft' agree.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SIDES = {"l": "L", "left": "L", "r": "R", "right": "R"}
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}
PREFIXES = ("ORG", "MCH", "DEF")  # Rigify's generated-bone prefixes; controls have none


class BoneName(NamedTuple):
    prefix: str  # 'ORG', 'MCH', 'DEF' or ''
    side: str  # 'L', 'R' or ''
    base: str  # lower case, no separators, no side marker


def parse(name: str) -> BoneName:
    """Split a bone name into its generator prefix, side and base."""
    name = name.rsplit(":", 1)[-1]
    prefix = next((p for p in PREFIXES if name.startswith((p + "-", p + "_"))), "")
    tokens = [t.lower() for t in _TOKEN.findall(name[len(prefix) + 1:] if prefix else name)]
    side = next((_SIDES[t] for t in tokens if t in _SIDES), "")
    if side:
        tokens.remove(next(t for t in tokens if t in _SIDES))
    return BoneName(prefix, side, "".join(tokens))


def mirror_name(name: str) -> str:
    """The same bone name on the other side (first side marker swapped, its case kept)."""
    for m in _TOKEN.finditer(name):
        low = m.group().lower()
        if low in _OTHER_SIDE:
            other = _OTHER_SIDE[low]
            other = other.upper() if m.group().isupper() else other.capitalize() if m.group()[0].isupper() else other
            return name[:m.start()] + other + name[m.end():]
    return name
