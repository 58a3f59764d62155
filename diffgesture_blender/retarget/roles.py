"""The one table of rig roles: what each role is, where its aimed segment ends, what drives it, which part it is.

Detection (the hierarchy a map must have), solving (joint-to-joint segments, chains, twists) and notes (parts,
required roles) all read `TABLE`. A role's segment runs from the head of its bone to the head of the first mapped
role in `to` (the next joint), or to its own tail when none is mapped (a leaf such as the head or a fingertip).
Chain roles ("spine", "neck") share one swing spread over their mapped bones, aimed at the chain's end joint.
Required are the roles without which the figure cannot gesture: the spine, the head, the upper arms and forearms. A
rig without a neck, chest or clavicle bone is driven all the same (`folded` says what takes the missing share).
"""
from __future__ import annotations

from dataclasses import dataclass

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
SIDES = ("left", "right")
SPINE_ROLES = ("spine", "spine1", "spine2", "spine3", "spine4")  # from the hips upwards
NECK_ROLES = ("neck", "neck1", "head")  # the neck chain ends with the head
ARM_ROLES = ("clavicle", "upper_arm", "forearm", "hand")


@dataclass(frozen=True)
class Role:
    """One role of a humanoid rig.

    above: the nearest role that must be an ancestor of this one's bone; to: roles whose head ends this role's
    segment, the first mapped one wins (else the bone's tail); chain: the shared chain it belongs to; target: the
    key of the generated vector that aims the segment (for chains, the chain's key); twist: what turns the bone about
    its segment ('palm': the index-to-pinky line, 'face': the nose direction); part: the body part that drives it.
    """

    name: str
    part: str | None
    above: str | None
    to: tuple[str, ...] = ()
    chain: str | None = None
    target: str | None = None
    twist: str | None = None
    required: bool = False


def _table() -> dict[str, Role]:
    roles = [Role("hips", None, None)]
    centre = SPINE_ROLES + NECK_ROLES
    for k, r in enumerate(centre):
        chain = "spine" if r in SPINE_ROLES else "neck"
        later = centre[k + 1:] if chain == "spine" else NECK_ROLES[NECK_ROLES.index(r) + 1:]
        roles.append(Role(r, "spine", centre[k - 1] if k else "hips", later, chain, chain,
                          "face" if r == "head" else None, r in ("spine", "head")))
    for s in SIDES:
        arm = [f"{s}_{r}" for r in ARM_ROLES]
        for k, r in enumerate(ARM_ROLES):
            to = (f"{s}_middle1",) if r == "hand" else (arm[k + 1],)  # the hand: wrist -> middle finger base
            roles.append(Role(arm[k], "arms", arm[k - 1] if k else "spine", to, target=arm[k],
                              twist="palm" if r == "hand" else None, required=r in ("upper_arm", "forearm")))
        for f in FINGERS:
            for i in (1, 2, 3):
                roles.append(Role(f"{s}_{f}{i}", "fingers", f"{s}_{f}{i - 1}" if i > 1 else f"{s}_hand",
                                  (f"{s}_{f}{i + 1}",) if i < 3 else (), target=f"{s}_{f}{i}"))
    return {r.name: r for r in roles}


TABLE: dict[str, Role] = _table()
ROLES: list[str] = list(TABLE)
REQUIRED_ROLES: list[str] = [r.name for r in TABLE.values() if r.required]
PARTS: dict[str, list[str]] = {p: [r.name for r in TABLE.values() if r.part == p] for p in ("spine", "arms", "fingers")}


def side_of(role: str) -> str:
    """'left', 'right' or '' (centre)."""
    return role.split("_", 1)[0] if role.startswith(SIDES) else ""


def mirror_role(role: str) -> str:
    """The same role on the other side (centre roles are their own mirror)."""
    side = side_of(role)
    return {"left": "right", "right": "left"}[side] + role[len(side):] if side else role


def missing_required(mapping: dict[str, str]) -> list[str]:
    return [r for r in REQUIRED_ROLES if r not in mapping]


def folded(mapping: dict[str, str], parts: set[str]) -> list[str]:
    """What takes the share of the neck, chest and clavicle bones a rig lacks, for the driven parts ('no X: ...')."""
    out = []
    if "spine" in parts and not any(r in mapping for r in ("neck", "neck1")):
        out.append("no neck bone: the head carries the neck's share")
    if "spine" in parts and not any(r in mapping for r in SPINE_ROLES[1:]):
        out.append("no chest bone: the spine carries the chest's share")
    sides = [s for s in SIDES if f"{s}_clavicle" not in mapping and f"{s}_upper_arm" in mapping]
    if "arms" in parts and sides:
        out.append(f"no {' and '.join(sides)} clavicle bone{'s' * (len(sides) > 1)}: the upper arms swing from the "
                   "chest, without the shoulders' own shrug")
    return out


def mapped_above(role: str, mapping: dict[str, str]) -> str | None:
    """The nearest role above this one (towards the hips) that the map has."""
    above = TABLE[role].above
    while above is not None and above not in mapping:
        above = TABLE[above].above
    return above


def end_joint(role: str, mapping: dict[str, str]) -> str | None:
    """The mapped role whose head ends this role's segment, or None (the segment ends at the bone's tail)."""
    return next((r for r in TABLE[role].to if r in mapping), None)
