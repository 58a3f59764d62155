"""Bone-map files: the presets shipped in presets/*.json and the maps users save and load, in one JSON format.

    {"format": "diffgesture-bone-map", "version": 1, "family": "mixamo", "mirror": true,
     "bones": {"left_upper_arm": ["LeftArm"], "head": "Head", ...}}

`bones` maps a role to a bone name or a list of aliases (the first that the rig has wins). With `mirror`, only the
centre and left roles are listed and the right roles take the same names with the side marker swapped, matched as
keys (names.parse), so the character's anatomical left always gets the left vectors. A map is applied to a rig by
key, so a file saved from one character also fits another of its family ('mixamorig1:' or 'mixamorig:').
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from ..shared import files
from .names import BoneName, parse, shared_prefix
from .roles import ROLES, TABLE, mirror_role

FORMAT, VERSION = "diffgesture-bone-map", 1
MAX_FILE_BYTES = 1 << 20  # a map of every role with a few aliases each is a few KB
PRESET_DIR = Path(__file__).resolve().parent / "presets"


class BoneMapFileError(ValueError):
    """A bone-map file that cannot be read: not JSON, another format, or unknown roles."""


def parse_map(doc: object, source: str) -> tuple[str | None, dict[str, list[str]], bool]:
    """(family, role -> aliases, mirror) of a bone-map document; raises BoneMapFileError naming the problem."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BoneMapFileError(f"{source} is not a DiffGesture bone map (expected \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise BoneMapFileError(f"{source} has bone-map version {doc.get('version')!r}; this add-on reads {VERSION}")
    bones = doc.get("bones")
    if not isinstance(bones, dict):
        raise BoneMapFileError(f"{source} has no \"bones\" object")
    unknown = sorted(r for r in bones if r not in TABLE)
    if unknown:
        raise BoneMapFileError(f"{source} has unknown roles {unknown}; known roles: {', '.join(ROLES)}")
    aliases = {}
    for role, value in bones.items():
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise BoneMapFileError(f"{source}: {role} must be a bone name or a list of names")
        aliases[role] = names
    return doc.get("family"), aliases, bool(doc.get("mirror", False))


@cache
def presets() -> dict[str, tuple[dict[str, list[str]], bool]]:
    """The shipped presets: family -> (role -> aliases, mirror), in a fixed order (file name)."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.json")):
        family, aliases, mirror = parse_map(json.loads(path.read_text(encoding="utf-8")), path.name)
        out[family or path.stem] = (aliases, mirror)
    return out


def role_keys(aliases: dict[str, list[str]], mirror: bool) -> dict[str, list[BoneName]]:
    """Every role of a map (both sides when mirrored) with the name keys it accepts, in alias order."""
    keys = {r: [parse(a) for a in names] for r, names in aliases.items()}
    if mirror:
        swap = {"L": "R", "R": "L", "": ""}
        for role in list(keys):
            other = mirror_role(role)
            if other != role and other not in aliases:
                keys[other] = [k._replace(side=swap[k.side]) for k in keys[role]]
    return keys


def match(bone_names: list[str], aliases: dict[str, list[str]], mirror: bool) -> dict[str, str]:
    """Map roles onto bone names: the exact name first, then by key (then by key without a prefix all the rig's bones
    share); earlier aliases win."""
    exact = set(bone_names)
    by_key: dict[BoneName, str] = {}
    for n in bone_names:
        by_key.setdefault(parse(n), n)
    cut = len(shared_prefix(bone_names))
    for n in bone_names if cut else ():
        by_key.setdefault(parse(n[cut:]), n)
    mapping = {}
    for role, keys in role_keys(aliases, mirror).items():
        names = aliases.get(role, [])
        found = next((n for n in names if n in exact), None) or next((by_key[k] for k in keys if k in by_key), None)
        if found:
            mapping[role] = found
    return mapping


def read_file(path: str | Path) -> tuple[str | None, dict[str, list[str]], bool]:
    """Read a bone-map file; raises BoneMapFileError (or OSError) with the path in the message."""
    path = Path(path)
    try:  # a FIFO or a device is refused unopened, a huge, non-UTF-8 or deeply nested file with a message
        doc = files.read_json(path, MAX_FILE_BYTES, "the bone map")
    except ValueError as e:
        raise BoneMapFileError(str(e)) from None
    return parse_map(doc, str(path))


def is_bone_map_file(path: Path) -> bool:
    """Whether a file is a bone map (this format): what saving a map may replace."""
    try:
        return read_file(path) is not None
    except (BoneMapFileError, OSError):
        return False


def write_file(path: str | Path, mapping: dict[str, str], family: str | None) -> None:
    """Save a bone map (both sides spelled out) that read_file and the presets' matching can apply."""
    bones = {r: mapping[r] for r in ROLES if mapping.get(r)}
    doc = {"format": FORMAT, "version": VERSION, "family": family, "mirror": False, "bones": bones}
    files.write_text(path, json.dumps(doc, indent=1) + "\n")  # all or nothing; the caller checks the path first
