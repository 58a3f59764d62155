"""Finding the humanoid in a rig from its hierarchy and rest geometry alone (pure; world-space rest positions).

The hips are the first bone (from the root) where three long branches part: two legs going down (directly or under a
pelvis bone of their own; the two reaching lowest, not a skirt's strands) and the spine going up. The spine climbs
to the chest, where the two arms reach out
sideways beside the neck; the neck chain goes up to the head (the last bone that starts higher than the one before
it with a good part of the neck-to-top height still above its head, and does not start a hanging chain such as a
twin tail). The arms and the neck follow the child that carries them on furthest (Structure.main_line), not the
longest branch, so accessories (sleeves, hair) hanging off a limb or the head do not lead them astray. Along an arm,
the upper arm and forearm are long spans of comparable length (else the arm is left to the names), the bone before
them the clavicle, the hand where the fingers branch or where the line has little left (_arm_roles). Left and right come from the feet (toes point
forward) or, without feet, from the world's -Y as forward (Blender's convention).
Below each hand, five finger chains (through carpal or palm bones where two fingers share one): the thumb is the one
whose base lies off the line the other four bases make across the hand, and those four are ordered from the end
nearest the thumb (index) to the far end (little finger). A finger's first bone is dropped as a metacarpal when it
starts nearer the wrist than its own length and three bones follow; the thumb keeps its first bone (the thumb1 role
is its metacarpal in every family). A hand without exactly five such chains is left to the names.
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
        self._extent: dict[str, np.ndarray] = {}
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

    def main_line(self, b: str, along: bool = False) -> list[str]:
        """b and then, each time, the child with the longest reach, down to a leaf. along: the child reaching furthest
        along the line so far (from b's head to the last bone's head) once there is one, for a limb or the neck,
        where a sleeve or a long hair chain can outreach the hand or the head top."""
        line = [b]
        while kids := self.children.get(line[-1], []):
            heading = self.heads[line[-1]] - self.heads[b]
            if along and np.linalg.norm(heading) > 1e-9:
                line.append(max(kids, key=lambda c: float(np.max((self.extent(c) - self.heads[b]) @ heading))))
            else:
                line.append(max(kids, key=self.branch))
        return line

    def hangs(self, b: str) -> bool:
        """b starts a chain that hangs (hair, a tail, a skirt's strand): one bone after another, no branching, none
        of them, nor b's tail, rising a tenth of the chain's reach above b's head."""
        below, line = self.extent(b), self.main_line(b)
        rise = max(float(np.max((below - self.heads[b]) @ UP)), float((self.tails[b] - self.heads[b]) @ UP))
        return len(line) > 1 and len(below) == len(line) and rise < 0.1 * self.reach[b]

    def extent(self, b: str) -> np.ndarray:
        """Every head below b (b included)."""
        if b not in self._extent:
            out, todo = [], [b]
            while todo:
                x = todo.pop()
                out.append(self.heads[x])
                todo.extend(self.children.get(x, []))
            self._extent[b] = np.array(out)
        return self._extent[b]


def _long_children(s: Structure, b: str, size: float) -> list[str]:
    return [c for c in s.children.get(b, []) if s.branch(c) > 0.2 * size]


def _parting(s: Structure, b: str, size: float) -> list[str]:
    """The long branches that part at b, a pelvis bone that only carries the legs (Daz, Character Creator: hip ->
    pelvis -> thighs beside hip -> spine) counting as its legs."""
    out = []
    for c in _long_children(s, b, size):
        legs = _long_children(s, c, size)
        below = len(legs) >= 2 and all(float(np.max(s.extent(g) @ UP)) <= float(s.heads[b] @ UP) for g in legs)
        out += legs if below else [c]
    return out


def find_humanoid(parents: dict[str, str | None], heads: dict[str, np.ndarray],
                  tails: dict[str, np.ndarray]) -> dict[str, str]:
    """A map {role: bone} for hips, spine, neck, head, clavicles, upper arms, forearms, hands and fingers; {} if not
    found (a part that is not found, such as a hand's fingers, is left out)."""
    if not parents:
        return {}
    s = Structure(parents, heads, tails)
    all_heads = np.array(list(heads.values()))
    size = float(np.ptp(all_heads @ UP))
    if size <= 0:
        return {}
    hips = next((b for b in _bfs(s) if len(_parting(s, b, size)) >= 3), None)
    if hips is None:
        return {}
    branches = _parting(s, hips, size)
    spine_start = max(branches, key=lambda c: float(np.max(s.extent(c) @ UP)))
    # the legs reach the ground: the two branches reaching lowest, not a skirt's strands that start lower than them
    legs = sorted((c for c in branches if c != spine_start), key=lambda c: float(np.min(s.extent(c) @ UP)))[:2]
    # climb the spine to the chest: the first bone where two branches reach far sideways (the arms; breast or rib
    # bones do not) beside the one that goes on up (the neck)
    line = [spine_start]
    while len(arms := _sideways(s, line[-1], size)) < 2 or len(s.children[line[-1]]) < 3:
        if not s.children.get(line[-1]):
            return {}
        line.append(max(s.children[line[-1]], key=s.branch))
    chest = line[-1]
    arms = arms[-2:]
    neck_line = s.main_line(max((c for c in s.children[chest] if c not in arms),
                                key=lambda c: float(np.max(s.extent(c) @ UP))), along=True)
    arm_lines = [s.main_line(c, along=True) for c in arms]
    top = max(max(float(s.tails[b] @ UP) for b in neck_line), float(np.max(s.extent(neck_line[0]) @ UP)))
    base = float(s.heads[neck_line[0]] @ UP)
    rise = [float(s.heads[b] @ UP) for b in neck_line]
    joints = [b for k, b in enumerate(neck_line) if k == 0 or rise[k] - rise[k - 1] > 0.01 * (top - base)]
    # not an eye at its joint, nor the root of a hair chain that starts above the head's joint
    heads = [b for b in joints if top - float(s.heads[b] @ UP) >= 0.3 * (top - base)]
    head = ([b for b in heads if not s.hangs(b)] or heads)[-1]
    necks = neck_line[:neck_line.index(head)]
    mapping = {"hips": hips, "head": head}
    spine = line if len(line) <= 5 else line[:4] + line[-1:]
    mapping.update(zip(("spine", "spine1", "spine2", "spine3", "spine4"), spine))
    mapping.update(zip(("neck", "neck1"), necks[:1] + necks[-1:] if len(necks) > 1 else necks))
    left_of = _left_axis(s, legs)
    arm_lines.sort(key=lambda ln: -float(s.heads[ln[min(2, len(ln) - 1)]] @ left_of))
    for side, ln in zip(("left", "right"), arm_lines):
        arm = _arm_roles(s, ln, side)
        mapping.update(arm)
        if f"{side}_hand" in arm:
            mapping.update(_finger_roles(s, arm[f"{side}_hand"], side))
    return mapping


def _sideways(s: Structure, b: str, size: float) -> list[str]:
    """Children of b whose bones reach more than 15 % of the figure's height away from b sideways, nearest first."""
    def reach(c: str) -> float:
        away = s.extent(c) - s.heads[b]
        return float(np.max(np.linalg.norm(away - np.outer(away @ UP, UP), axis=1)))

    return sorted((c for c in s.children.get(b, []) if reach(c) > 0.15 * size), key=reach)


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
    """Clavicle, upper arm, forearm and hand along one arm's main line.

    The hand is where the fingers branch (a bone with three or more child chains; a forearm carrying sleeve chains is
    one too, and loses to the hand on the proportions below), else any bone after which the line goes on for less
    than half the arm (a hand and its fingers). The shoulder and elbow are two joints before it whose
    upper-arm and forearm spans are of comparable length (ratio 0.5 to 2): among the choices spanning at least half
    the longest one, the ratio nearest 1.1 (an upper arm is a little longer than a forearm). Spans, not bones: a limb
    split into a bend and a twist bone in series (Daz Genesis 8, MakeHuman) is one span."""
    joints = [s.heads[b] for b in line] + [s.tails[line[-1]]]
    if len(line) < 3:
        return {}
    steps = [float(np.linalg.norm(q - p)) for p, q in zip(joints, joints[1:])]
    hands = [k for k in range(2, len(line)) if sum(len(s.main_line(c)) >= 2 for c in s.children.get(line[k], [])) >= 3]
    spans = []
    for w in hands or range(2, len(line)):
        beyond = sum(steps[w:])
        for a in range(w):
            for b in range(a + 1, w):
                up, fore = float(np.linalg.norm(joints[b] - joints[a])), float(np.linalg.norm(joints[w] - joints[b]))
                if fore > 0 and 0.5 <= up / fore <= 2.0 and (hands or beyond <= 0.45 * (up + fore)):
                    spans.append((a, b, w, up + fore, up / fore))
    if not spans:
        return {}  # no upper arm and forearm of comparable length: say nothing about this arm
    longest = max(x[3] for x in spans)
    a, b, w, _, _ = min((x for x in spans if x[3] >= 0.5 * longest), key=lambda x: abs(np.log(x[4] / 1.1)))
    out = {f"{side}_upper_arm": line[a], f"{side}_forearm": line[b], f"{side}_hand": line[w]}
    if a >= 1:
        out[f"{side}_clavicle"] = line[a - 1]
    return out


def _finger_chains(s: Structure, b: str) -> list[list[str]]:
    """The finger chains that start below b: each child's main line, or, for a carpal or palm bone that carries two
    or more comparable branches, the chains below it."""
    out = []
    for c in s.children.get(b, []):
        kids = s.children.get(c, [])
        longest = max((s.branch(k) for k in kids), default=0.0)
        if sum(s.branch(k) >= 0.5 * longest for k in kids) >= 2:
            out += _finger_chains(s, c)
        else:
            out.append(s.main_line(c))
    return out


def _finger_roles(s: Structure, hand: str, side: str) -> dict[str, str]:
    """Thumb, index, middle, ring and little finger (three bones each) below a hand; {} unless five chains of three
    or more bones are found."""
    wrist = s.heads[hand]

    def without_metacarpal(chain: list[str]) -> list[str]:
        first = float(np.linalg.norm(s.heads[chain[1]] - s.heads[chain[0]]))
        return chain[1:] if len(chain) >= 4 and np.linalg.norm(s.heads[chain[0]] - wrist) < first else chain

    chains = [c for c in _finger_chains(s, hand) if len(c) >= 3]
    if len(chains) != 5:
        return {}
    fingers = [without_metacarpal(c) for c in chains]
    bases = np.array([s.heads[c[0]] for c in fingers])

    def off_line(others: np.ndarray) -> float:
        """How far points lie from their best straight line (their second and third principal spreads)."""
        return float(np.linalg.norm(np.linalg.svd(others - others.mean(0), compute_uv=False)[1:]))

    thumb = min(range(5), key=lambda i: off_line(np.delete(bases, i, 0)))
    rest = [i for i in range(5) if i != thumb]
    across = np.linalg.svd(bases[rest] - bases[rest].mean(0))[2][0]
    if (bases[thumb] - bases[rest].mean(0)) @ across < 0:
        across = -across  # towards the thumb
    rest.sort(key=lambda i: -float(bases[i] @ across))
    out = {f"{side}_thumb{k}": b for k, b in enumerate(chains[thumb][:3], start=1)}
    for name, i in zip(("index", "middle", "ring", "pinky"), rest):
        out.update({f"{side}_{name}{k}": b for k, b in enumerate(fingers[i][:3], start=1)})
    return out
