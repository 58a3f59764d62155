"""Auto-detection of a rig's bone map (pure): by the presets' names, checked against the hierarchy.

Each preset is matched by name key (names.parse); mapped bones that do not descend from each other the way the role
table says are dropped; the preset covering the most roles wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import presets
from .roles import REQUIRED_ROLES, TABLE, mapped_above, missing_required


def ancestors(parents: dict[str, str | None], bone: str) -> set[str]:
    out = set()
    while parents.get(bone):
        bone = parents[bone]
        out.add(bone)
    return out


def hierarchy_problems(parents: dict[str, str | None], mapping: dict[str, str]) -> list[tuple[str, str]]:
    """(role, message) for mapped bones that do not descend from each other the way the roles imply."""
    problems = []
    for role in TABLE:
        above = mapped_above(role, mapping) if role in mapping else None
        if above is not None and mapping[above] not in ancestors(parents, mapping[role]):
            problems.append((role, f"{role} ({mapping[role]}) is not below {above} ({mapping[above]})"))
    return problems


@dataclass
class Detection:
    """Result of auto-detection: the family, its map, coverage, what was vetoed, and a message for the user."""

    preset: str | None
    mapping: dict[str, str] = field(default_factory=dict)
    covered: int = 0
    total: int = 0
    missing_required: list[str] = field(default_factory=list)
    vetoed: list[str] = field(default_factory=list)  # 'role: bone (why)' for name matches that were dropped
    message: str = ""


def by_names(parents: dict[str, str | None], family: str) -> tuple[dict[str, str], list[str]]:
    """A preset's map on these bones, minus roles in the wrong place; and what was dropped."""
    aliases, mirror = presets.presets()[family]
    mapping = presets.match(list(parents), aliases, mirror)
    vetoed = []
    for role, message in hierarchy_problems(parents, mapping):
        if role in mapping:
            vetoed.append(message)
            mapping.pop(role)
    return mapping, vetoed


def detect_from_names(parents: dict[str, str | None]) -> Detection:
    """Pick the preset covering the most roles with a valid hierarchy (bone name -> parent name)."""
    best = Detection(None, total=len(TABLE), missing_required=list(REQUIRED_ROLES))
    for family, (aliases, mirror) in presets.presets().items():
        mapping, vetoed = by_names(parents, family)
        if len(mapping) > best.covered:
            best = Detection(family, mapping, len(mapping), len(presets.role_keys(aliases, mirror)),
                             missing_required(mapping), vetoed)
    return describe(best)


def describe(d: Detection) -> Detection:
    """Fill in the message for the user."""
    if d.preset is None:
        d.message = "No known rig family recognised; map the bones by hand. Missing: " + ", ".join(d.missing_required)
    elif d.missing_required:
        d.message = (f"Looks like {d.preset} ({d.covered}/{d.total} roles) but these required bones are missing: "
                     + ", ".join(d.missing_required))
    else:
        d.message = f"Detected {d.preset}: {d.covered}/{d.total} roles mapped"
    if d.vetoed:
        d.message += "; not used: " + "; ".join(d.vetoed)
    return d
