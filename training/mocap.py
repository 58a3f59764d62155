"""Forearm motion of motion capture takes (BVH), mapped to the model's skeleton, to calibrate the smoothness measure.

    python -m training.mocap TAKE.bvh [...]     # the share of forearm motion power above 4 Hz, per take and pooled

The measure (training.metrics.forearm_velocity_power) reads the forearm directions at 15 fps. Here they come from a
BVH take by forward kinematics: the model's forearm (model_core.skeleton: elbow to wrist) is the BVH joint of the
elbow to the joint of the wrist (CMU_FOREARMS for the CMU database's BVH conversions), turned each frame by the
hips' heading about the vertical, so that a speaker who turns or walks while talking is measured as if facing one
way (the model's data are in the speaker's frame), and resampled to 15 fps with an anti-aliasing filter.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from model_core.timing import FPS

from .metrics import forearm_velocity_power, high_frequency_share

# (elbow joint, wrist joint) per arm, and the joints whose line gives the hips' heading, in the CMU BVH conversions
CMU_FOREARMS = {"left": ("LeftForeArm", "LeftHand"), "right": ("RightForeArm", "RightHand")}
CMU_HIPS = ("LeftUpLeg", "RightUpLeg")
MAX_FRAMES = 2_000_000  # a BVH's declared frame count is checked against the lines it has before anything is sized


@dataclass
class Take:
    """A BVH take: joints (End Sites named "<joint>_end") with parents, offsets and channels, and its motion."""

    names: list[str]
    parents: list[int]
    offsets: np.ndarray  # (joints, 3)
    channels: list[list[str]]
    motion: np.ndarray  # (frames, channels)
    frame_time: float


def read_bvh(path: str | Path) -> Take:
    """Parse a BVH file's hierarchy and motion; a malformed file raises ValueError saying where."""
    lines = Path(path).read_text().splitlines()
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int] = []
    i = 0
    try:
        while lines[i].strip() != "MOTION":
            words = lines[i].split()
            if words and words[0] in ("ROOT", "JOINT", "End"):
                name = f"{names[stack[-1]]}_end" if words[0] == "End" else words[1]
                parents.append(stack[-1] if stack else -1)
                names.append(name)
                offsets.append([0.0, 0.0, 0.0])
                channels.append([])
                stack.append(len(names) - 1)
            elif words and words[0] == "OFFSET":
                offsets[stack[-1]] = [float(v) for v in words[1:4]]
            elif words and words[0] == "CHANNELS":
                channels[stack[-1]] = words[2:2 + int(words[1])]
            elif words and words[0] == "}":
                stack.pop()
            i += 1
        frames = int(lines[i + 1].split(":")[1])
        frame_time = float(lines[i + 2].split(":")[1])
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: not a BVH file (line {i + 1}: {e})") from None
    rows = [r for r in lines[i + 3:] if r.strip()]
    if not 0 < frames <= min(len(rows), MAX_FRAMES) or frame_time <= 0:
        raise ValueError(f"{path}: declares {frames} frames of {frame_time} s, has {len(rows)} motion lines")
    motion = np.array([r.split() for r in rows[:frames]], dtype=np.float64)
    if motion.shape[1] != sum(map(len, channels)):
        raise ValueError(f"{path}: {motion.shape[1]} values per frame for {sum(map(len, channels))} channels")
    return Take(names, parents, np.array(offsets), channels, motion, frame_time)


def _axis_rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    """Rotation matrices (frames, 3, 3) about the X, Y or Z axis."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)]["XYZ".index(axis)]
    r = np.zeros((len(a), 3, 3))
    r[:, "XYZ".index(axis), "XYZ".index(axis)] = 1
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


def joint_positions(take: Take) -> dict[str, np.ndarray]:
    """World positions (frames, 3) of every joint and End Site, by forward kinematics (rotations in channel order)."""
    n = len(take.motion)
    col = 0
    pos: list[np.ndarray] = []
    rot: list[np.ndarray] = []
    for j, (parent, chans) in enumerate(zip(take.parents, take.channels)):
        local = np.broadcast_to(np.eye(3), (n, 3, 3))
        shift = np.zeros((n, 3))
        for c in chans:
            if c.endswith("position"):
                shift[:, "XYZ".index(c[0].upper())] = take.motion[:, col]
            else:
                local = local @ _axis_rotation(c[0].upper(), take.motion[:, col])
            col += 1
        if parent < 0:
            pos.append(shift + take.offsets[j])
            rot.append(local)
        else:
            pos.append(pos[parent] + np.einsum("nij,nj->ni", rot[parent], take.offsets[j] + shift))
            rot.append(rot[parent] @ local)
    return dict(zip(take.names, pos))


def forearm_directions(take: Take, forearms: dict[str, tuple[str, str]] = CMU_FOREARMS,
                       hips: tuple[str, str] | None = CMU_HIPS, up: int = 1) -> np.ndarray:
    """Unit forearm directions (frames at 15 fps, arms, 3), left then right, in the hips' heading frame when `hips`
    names the joints across them (`up`: the take's vertical axis, 1 for Y-up CMU files)."""
    pos = joint_positions(take)
    missing = [n for pair in forearms.values() for n in pair if n not in pos]
    if missing:
        raise ValueError(f"the take has no joints {missing} (it has {sorted(pos)[:12]}...)")
    d = np.stack([pos[b] - pos[a] for a, b in (forearms["left"], forearms["right"])], axis=1)
    if hips is not None:
        across = pos[hips[0]] - pos[hips[1]]
        h = [k for k in range(3) if k != up]
        heading = np.arctan2(across[:, h[1]], across[:, h[0]])
        c, s = np.cos(-heading)[:, None], np.sin(-heading)[:, None]
        a, b = d[..., h[0]].copy(), d[..., h[1]].copy()
        d[..., h[0]], d[..., h[1]] = c * a - s * b, s * a + c * b
    ratio = Fraction(FPS * take.frame_time).limit_denominator(1000)
    if ratio != 1:
        from scipy.signal import resample_poly
        d = resample_poly(d, ratio.numerator, ratio.denominator, axis=0, padtype="line")
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)


def hf_shares(paths: list[str | Path], **mapping) -> dict[str, np.ndarray]:
    """The high-frequency share (left, right, both arms) of each take and pooled over the takes (power weighted by
    frames), as training.evaluate's hf_share."""
    def shares(psd: np.ndarray, freqs: np.ndarray) -> np.ndarray:
        return np.r_[high_frequency_share(psd, freqs), high_frequency_share(psd.sum(0), freqs)]
    out, pooled = {}, 0.0
    for path in paths:
        dirs = forearm_directions(read_bvh(path), **mapping)
        spectrum = forearm_velocity_power(dirs)
        if spectrum is None:
            raise ValueError(f"{path}: too short to measure ({len(dirs)} frames at {FPS} fps)")
        psd, freqs = spectrum
        out[str(path)] = shares(psd, freqs)
        pooled = pooled + psd * (len(dirs) - 1)
    out["pooled"] = shares(pooled, freqs)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Share of forearm motion power above 4 Hz in BVH takes (CMU joints).")
    p.add_argument("takes", nargs="+")
    a = p.parse_args(argv)
    for name, share in hf_shares(a.takes).items():
        print(f"{name}: left {share[0]:.4f}, right {share[1]:.4f}, both {share[2]:.4f}")


if __name__ == "__main__":
    main()
