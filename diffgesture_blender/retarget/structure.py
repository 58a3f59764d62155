"""Finding the humanoid in a rig from its hierarchy and rest geometry alone (pure; world-space rest positions).

The hips are the first bone (from the root) where three long branches part: two legs going down and the spine going
up. The spine climbs to the chest, where the two arms branch off sideways from the neck; the neck chain goes up to
the head (the last bone with a good part of the neck-to-top height still above its head). Along an arm, the upper arm
and forearm are the two longest consecutive segments (joint to joint), which must be of comparable length (else the
arm is left to the names), the bone before them the clavicle, the one after them the hand. Left and right come from the feet (toes point forward) or, without feet, from the world's -Y
as forward (Blender's convention). Fingers are not looked for: the name presets map them.
"""
from __future__ import annotations

import numpy as np

UP = np.array([0.0, 0.0, 1.0])


class Structure:
    """The rig's tree with rest heads and tails (world space) and the size of what hangs below each bone."""

    def __init__(self, parents: dict[str, str | None], heads: dict[str, np.ndarray], tails: dict[str, np.ndarray]):
        self.parents, self.heads, self.tails = parents, heads, tails
        self.children: dict[str | None, list[str]] = {}
        for b, p in parents.items():
            self.children.setdefault(p, []).append(b)
        self.reach: dict[str, float] = {}  # longest joint-to-joint path below a bone's head
        for b in self._post_order():
            ends = [np.linalg.norm(self.heads[c] - self.heads[b]) + self.reach[c] for c in self.children.get(b, [])]
            self.reach[b] = max(ends, default=float(np.linalg.norm(self.tails[b] - self.heads[b])))

    def _post_order(self) -> list[str]:
        out, todo = [], list(self.children.get(None, []))
        while todo:
            b = todo.pop()
            out.append(b)
            todo.extend(self.children.get(b, []))
        return out[::-1]

    def branch(self, b: str) -> float:
        return self.reach[b] + float(np.linalg.norm(self.heads[b] - self.heads[self.parents[b]])) \
            if self.parents[b] else self.reach[b]

    def main_line(self, b: str) -> list[str]:
        """b and then, each time, the child with the longest reach, down to a leaf."""
        line = [b]
        while self.children.get(line[-1]):
            line.append(max(self.children[line[-1]], key=lambda c: self.branch(c)))
        return line

    def extent(self, b: str) -> np.ndarray:
        """Every head below b (b included)."""
        out, todo = [], [b]
        while todo:
            x = todo.pop()
            out.append(self.heads[x])
            todo.extend(self.children.get(x, []))
        return np.array(out)


def _long_children(s: Structure, b: str, size: float) -> list[str]:
    return [c for c in s.children.get(b, []) if s.branch(c) > 0.2 * size]


def find_humanoid(parents: dict[str, str | None], heads: dict[str, np.ndarray],
                  tails: dict[str, np.ndarray]) -> dict[str, str]:
    """A map {role: bone} for hips, spine, neck, head, clavicles, upper arms, forearms and hands; {} if not found."""
    if not parents:
        return {}
    s = Structure(parents, heads, tails)
    all_heads = np.array(list(heads.values()))
    size = float(np.ptp(all_heads @ UP))
    if size <= 0:
        return {}
    hips = next((b for b in _bfs(s) if len(_long_children(s, b, size)) >= 3), None)
    if hips is None:
        return {}
    branches = sorted(_long_children(s, hips, size), key=lambda c: float(np.max(s.extent(c) @ UP)))
    spine_start, legs = branches[-1], branches[:2]
    # climb the spine to the chest: the first bone where two sideways branches part from the upward one
    line, chest = [spine_start], None
    while True:
        b = line[-1]
        long = _long_children(s, b, size * 0.5)
        if len(long) >= 3:
            chest = b
            break
        if not s.children.get(b):
            return {}
        line.append(max(s.children[b], key=s.branch))
    arms_and_neck = sorted(_long_children(s, chest, size * 0.5), key=lambda c: float(np.max(s.extent(c) @ UP)))
    neck_line = s.main_line(arms_and_neck[-1])
    arm_lines = [s.main_line(c) for c in arms_and_neck[:2]]
    top = max(float(s.tails[neck_line[-1]] @ UP), float(np.max(s.extent(neck_line[0]) @ UP)))
    base = float(s.heads[neck_line[0]] @ UP)
    head = [b for b in neck_line if top - float(s.heads[b] @ UP) >= 0.3 * (top - base)][-1]
    necks = neck_line[:neck_line.index(head)]
    mapping = {"hips": hips, "head": head}
    spine = line if len(line) <= 5 else line[:4] + line[-1:]
    mapping.update(zip(("spine", "spine1", "spine2", "spine3", "spine4"), spine))
    mapping.update(zip(("neck", "neck1"), necks[:1] + necks[-1:] if len(necks) > 1 else necks))
    left_of = _left_axis(s, legs)
    arm_lines.sort(key=lambda ln: -float(s.heads[ln[min(2, len(ln) - 1)]] @ left_of))
    for side, ln in zip(("left", "right"), arm_lines):
        mapping.update(_arm_roles(s, ln, side))
    return mapping


def _bfs(s: Structure) -> list[str]:
    out, todo = [], list(s.children.get(None, []))
    while todo:
        b = todo.pop(0)
        out.append(b)
        todo.extend(s.children.get(b, []))
    return out


def _left_axis(s: Structure, legs: list[str]) -> np.ndarray:
    """The character's left: up x forward, forward from the feet (toe minus ankle), else the world's -Y."""
    forward = np.zeros(3)
    for leg in legs:
        line = s.main_line(leg)
        if len(line) >= 3:
            step = s.tails[line[-1]] - s.heads[line[-2]]
            forward += step - (step @ UP) * UP
    if np.linalg.norm(forward) < 1e-6:
        forward = np.array([0.0, -1.0, 0.0])
    return np.cross(UP, forward / np.linalg.norm(forward))


def _arm_roles(s: Structure, line: list[str], side: str) -> dict[str, str]:
    """Clavicle, upper arm, forearm and hand along one arm's main line."""
    joints = [s.heads[b] for b in line] + [s.tails[line[-1]]]
    lengths = [float(np.linalg.norm(b - a)) for a, b in zip(joints, joints[1:])]
    if len(line) < 3:
        return {}
    i = max(range(len(line) - 2), key=lambda k: lengths[k] + lengths[k + 1])
    if not 0.5 <= lengths[i] / max(lengths[i + 1], 1e-9) <= 2.0:
        return {}  # not an upper arm and a forearm of comparable length: say nothing about this arm
    out = {f"{side}_upper_arm": line[i], f"{side}_forearm": line[i + 1], f"{side}_hand": line[i + 2]}
    if i >= 1:
        out[f"{side}_clavicle"] = line[i - 1]
    return out
