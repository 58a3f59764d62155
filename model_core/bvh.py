"""Generated motion as a BVH file of the model's own skeleton, for tools other than Blender.

The skeleton keeps its fixed bone lengths (metres) in BVH's usual frame, +Y up and facing +Z: the canonical frame
(+Z up, facing -Y) turned a quarter about X, which Blender's BVH importer turns back at its default axes (forward -Z,
up Y), so the figure stands upright there and in other tools. The rest pose is the dataset's mean pose. A joint with
several bones leaving it (the neck: nose, both collarbones; a wrist: five fingers) cannot aim them all with one
rotation, so every bone gets a BVH joint of its own, placed where the bone starts and named after it (the spine, which
starts at the root joint, is the ROOT); its rotation turns the bone's rest direction onto the generated one by the
shortest arc. Chained with the offsets, the BVH's joint positions are model_core.skeleton.to_joints of the generated
directions, turned by TO_BVH.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import write_text
from .skeleton import Skeleton, dataset_to_canonical
from .timing import FPS

ROTATION = "Zrotation Xrotation Yrotation"  # a joint's rotation is Rz @ Rx @ Ry, the usual BVH order
CHANNELS = {"ROOT": f"6 Xposition Yposition Zposition {ROTATION}", "JOINT": f"3 {ROTATION}"}
# canonical (x, y, z) -> BVH (x, z, -y): up +Z -> +Y, facing -Y -> +Z
TO_BVH = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def shortest_arc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) turning unit vectors a onto unit vectors b (..., 3) about a x b."""
    v = np.cross(a, b)
    c = np.sum(a * b, axis=-1)[..., None, None]
    vx = np.zeros((*v.shape[:-1], 3, 3))
    vx[..., 0, 1], vx[..., 0, 2], vx[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    vx = vx - np.swapaxes(vx, -1, -2)
    eye = np.broadcast_to(np.eye(3), vx.shape)
    opposite = c[..., 0, 0] < -1 + 1e-9  # a half turn: about any axis perpendicular to a
    r = eye + vx + vx @ vx / np.where(opposite[..., None, None], 1.0, 1 + c)
    if opposite.any():
        axis = np.cross(a[opposite], np.where(np.abs(a[opposite][..., :1]) < 0.9, [1.0, 0, 0], [0, 1.0, 0]))
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        r[opposite] = 2 * axis[..., :, None] * axis[..., None, :] - np.eye(3)
    return r


def zxy_euler(r: np.ndarray) -> np.ndarray:
    """Degrees (z, x, y) with r = Rz(z) @ Rx(x) @ Ry(y), for matrices (..., 3, 3)."""
    x = np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0))
    z = np.arctan2(-r[..., 0, 1], r[..., 1, 1])
    y = np.arctan2(-r[..., 2, 0], r[..., 2, 2])
    return np.degrees(np.stack([z, x, y], axis=-1))


def _layout(skel: Skeleton) -> tuple[list[int | None], np.ndarray]:
    """For each bone: the bone it hangs from (None at the root joint), and its rest direction (BVH frame)."""
    ending_at = {child: b for b, (_, child) in enumerate(skel.pairs)}
    parent = [ending_at.get(p) for p, _ in skel.pairs]
    rest = dataset_to_canonical(skel.mean, skel).astype(np.float64) @ TO_BVH.T
    return parent, rest / np.linalg.norm(rest, axis=-1, keepdims=True)


def write_bvh(path: str | Path, directions: np.ndarray, skel: Skeleton, fps: float = FPS) -> None:
    """Write canonical unit directions (frames, n_bones, 3) of one take as a BVH file at `fps`, all or nothing
    (files.write_text; the caller checks the path first: output_paths in pipeline.py)."""
    write_text(path, bvh_text(directions, skel, fps))


def is_own_bvh(path: Path, skel: Skeleton) -> bool:
    """Whether a file is a BVH that write_bvh made for this skeleton: its hierarchy is the one write_bvh writes."""
    header = bvh_text(np.zeros((0, len(skel.bones), 3)), skel).split("MOTION\n")[0] + "MOTION\n"
    try:
        with open(path, "rb") as f:
            return f.read(len(header.encode())) == header.encode()
    except OSError:
        return False


def bvh_text(directions: np.ndarray, skel: Skeleton, fps: float = FPS) -> str:
    """The BVH file of canonical unit directions (frames, n_bones, 3) of one take at `fps`."""
    dirs = np.asarray(directions, dtype=np.float64) @ TO_BVH.T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)  # unit to float64: a near half turn magnifies float32 slack
    parent, rest = _layout(skel)
    root, = (b for b, p in enumerate(parent) if p is None)  # one bone leaves the root joint: the spine
    glob = shortest_arc(np.broadcast_to(rest, dirs.shape), dirs)  # (F, B, 3, 3): each bone's rotation in the world
    local = np.empty_like(glob)
    for b, p in enumerate(parent):
        local[:, b] = glob[:, b] if p is None else np.swapaxes(glob[:, p], -1, -2) @ glob[:, b]
    angles = zxy_euler(local)  # (F, B, 3)
    lines = ["HIERARCHY"]
    order: list[int] = []

    def emit(b: int, depth: int) -> None:
        pad = "  " * depth
        p = parent[b]
        offset = np.zeros(3) if p is None else skel.lengths[p] * rest[p]
        kind = "ROOT" if p is None else "JOINT"
        lines.extend([f"{pad}{kind} {skel.bones[b]}", pad + "{", f"{pad}  OFFSET {_fmt(offset)}",
                      f"{pad}  CHANNELS {CHANNELS[kind]}"])
        order.append(b)
        children = [c for c, q in enumerate(parent) if q == b]
        for c in children:
            emit(c, depth + 1)
        if not children:
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_fmt(skel.lengths[b] * rest[b])}",
                          f"{pad}  }}"])
        lines.append(pad + "}")

    emit(root, 0)
    lines += ["MOTION", f"Frames: {len(dirs)}", f"Frame Time: {1.0 / fps:.7f}"]
    for f in range(len(dirs)):
        lines.append(" ".join(["0.000000 0.000000 0.000000"] + [_fmt(angles[f, b]) for b in order]))
    return "\n".join(lines) + "\n"


def _fmt(v: np.ndarray) -> str:
    return " ".join(f"{x:.6f}" for x in v)
