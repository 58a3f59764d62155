"""Auto-detection of a rig's bone map (pure): by the presets' names, checked against the hierarchy and the structure.

Each preset is matched by name key (names.parse); mapped bones that do not descend from each other the way the role
table says are dropped; the preset covering the most roles wins. The structure (structure.find_humanoid) then vetoes
a name match that puts a bone in another arm or finger role than its place says (a 3ds Max BVH's 'LeftShoulder' is
the upper arm, not the clavicle; a finger named 'Index' that is the middle finger), and fills the roles the names
left empty; with no preset at all it maps the rig alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import presets
from .roles import ARM_ROLES, FINGERS, REQUIRED_ROLES, SIDES, TABLE, mapped_above, missing_required, side_of
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
    declared: bool = False  # the map is the rig's own humanoid table (a VRM import's), not names


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


def _units() -> list[tuple[str, ...]]:
    """Roles the structure places together: each arm role alone, each finger's three bones as one chain."""
    out = []
    for side in SIDES:
        out += [(f"{side}_{r}",) for r in ARM_ROLES]
        out += [tuple(f"{side}_{f}{i}" for i in (1, 2, 3)) for f in FINGERS]
    return out


def from_table(parents: dict[str, str | None], table: dict[str, str]) -> Detection:
    """The rig's own humanoid table (a VRM import's) as a detection of the 'vrm' family, minus roles in the wrong
    place in the hierarchy."""
    mapping = {r: b for r, b in table.items() if r in TABLE and b in parents}
    vetoed = [message for role, message in hierarchy_problems(parents, mapping) if mapping.pop(role, None)]
    total = len(presets.role_keys(*presets.presets()["vrm"]))
    return describe(Detection("vrm", mapping, len(mapping), total, missing_required(mapping), vetoed, declared=True))


def detect_rig(parents: dict[str, str | None], heads: dict, tails: dict,
               table: dict[str, str] | None = None) -> Detection:
    """The rig's own humanoid table when given, else names; then the structure (world-space rest heads and tails)
    to veto and to fill.

    A name match is vetoed when the structure puts its bone in another arm or finger role (a whole finger chain is
    moved at once) and the result keeps the hierarchy; an arm whose upper arm, forearm and hand are all named keeps
    its names (names that agree along a whole arm are surer than its proportions); a table is never vetoed; roles
    still empty are filled from the structure."""
    d = from_table(parents, table) if table else detect_from_names(parents)
    found = find_humanoid(parents, heads, tails)
    if not found:
        return d
    mapping = dict(d.mapping)
    units = _units()
    vetoable = {r for unit in units for r in unit}
    named_arms = {s for s in SIDES if all(f"{s}_{r}" in d.mapping for r in ARM_ROLES[1:])}
    for unit in () if d.declared else units:  # a table is the rig's own word: never vetoed
        if not all(r in found for r in unit) or (len(unit) == 1 and side_of(unit[0]) in named_arms):
            continue
        role_of = {b: r for r, b in mapping.items()}
        olds = [role_of.get(found[r]) for r in unit]
        if all(o in (None, r) for o, r in zip(olds, unit)) or not all(o is None or o in vetoable for o in olds):
            continue
        trial = {r: b for r, b in mapping.items() if r not in unit and r not in olds}
        trial.update((r, found[r]) for r in unit)
        if not hierarchy_problems(parents, trial):
            mapping = trial
    role_of = {b: r for r, b in mapping.items()}
    for role, bone in found.items():
        if role not in mapping and bone not in role_of:
            trial = {**mapping, role: bone}
            if not hierarchy_problems(parents, trial):
                mapping, role_of[bone] = trial, role
    if mapping == d.mapping:
        return d
    placed = {b: r.split("_", 1)[-1].replace("_", " ") for r, b in found.items()}
    vetoed = list(d.vetoed) + [f"{r}: {b} is {'the ' + placed[b] if b in placed else 'not the ' + r} by its place "
                               "in the rig" for r, b in d.mapping.items() if mapping.get(r) != b]
    preset = d.preset if d.mapping else "structure"
    total = d.total if d.mapping else len(found)
    return describe(Detection(preset, mapping, len(mapping), max(total, len(mapping)), missing_required(mapping),
                              vetoed, declared=d.declared))


def describe(d: Detection) -> Detection:
    """Fill in the message for the user."""
    if d.preset is None:
        d.message = "No known rig family recognised; map the bones by hand. Missing: " + ", ".join(d.missing_required)
    elif d.missing_required:
        d.message = (f"Looks like {d.preset} ({d.covered}/{d.total} roles) but these required bones are missing: "
                     + ", ".join(d.missing_required))
    else:
        d.message = f"Detected {d.preset}: {d.covered}/{d.total} roles mapped"
    if d.declared:
        d.message += " (from the rig's VRM humanoid table)"
    if d.vetoed:
        d.message += "; not used: " + "; ".join(d.vetoed)
    return d
