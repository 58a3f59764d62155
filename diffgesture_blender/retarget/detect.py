"""Auto-detection of a rig's bone map (pure): by the presets' names, checked against the hierarchy and the structure.

Each preset is matched by name key (names.parse); mapped bones that do not descend from each other the way the role
table says are dropped; the preset covering the most roles wins. The structure (structure.find_humanoid) then vetoes
a name match that puts a bone in another arm role than its place says (a 3ds Max BVH's 'LeftShoulder' is the upper
arm, not the clavicle), and fills the roles the names left empty; with no preset at all it maps the rig alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import presets
from .roles import ARM_ROLES, REQUIRED_ROLES, TABLE, mapped_above, missing_required
from .structure import find_humanoid


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


def detect_rig(parents: dict[str, str | None], heads: dict, tails: dict) -> Detection:
    """Names first, then the structure (world-space rest heads and tails) to veto and to fill."""
    d = detect_from_names(parents)
    found = find_humanoid(parents, heads, tails)
    if not found:
        return d
    mapping, vetoed = dict(d.mapping), list(d.vetoed)
    arm_roles = {f"{s}_{r}" for s in ("left", "right") for r in ARM_ROLES}
    role_of = {b: r for r, b in mapping.items()}
    for role, bone in found.items():
        old = role_of.get(bone)
        if old is not None and old != role and {old, role} <= arm_roles:
            trial = {r: b for r, b in mapping.items() if r != old}
            trial[role] = bone
            if not hierarchy_problems(parents, trial):
                vetoed.append(f"{old}: {bone} is the {role.split('_', 1)[1].replace('_', ' ')} by its place in the rig")
                mapping = trial
                role_of = {b: r for r, b in mapping.items()}
    for role, bone in found.items():
        if role not in mapping and bone not in role_of:
            trial = {**mapping, role: bone}
            if not hierarchy_problems(parents, trial):
                mapping, role_of[bone] = trial, role
    if mapping == d.mapping:
        return d
    preset = d.preset if d.mapping else "structure"
    total = d.total if d.mapping else len(found)
    return describe(Detection(preset, mapping, len(mapping), max(total, len(mapping)), missing_required(mapping),
                              vetoed))


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
