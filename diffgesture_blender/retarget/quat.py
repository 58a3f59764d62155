"""Quaternions (w, x, y, z) and unit directions on numpy arrays (..., 4) / (..., 3): no Blender, no torch."""
from __future__ import annotations

import numpy as np

Y = np.array([0.0, 1.0, 0.0])
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])



def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b."""
    aw, av, bw, bv = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return np.concatenate([aw * bw - np.sum(av * bv, -1, keepdims=True),
                           aw * bv + bw * av + np.cross(av, bv)], -1)


def qconj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4)."""
    w, u = q[..., :1], q[..., 1:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def qbetween(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest rotation taking directions u to v (..., 3); a half turn about a perpendicular axis if opposite."""
    u, v = np.broadcast_arrays(unit(u), unit(v))
    d = np.sum(u * v, -1, keepdims=True)
    q = np.concatenate([1.0 + d, np.cross(u, v)], -1)
    opposite = d[..., 0] < -1.0 + 1e-9
    if np.any(opposite):
        w = u[opposite]
        perp = np.where(np.abs(w[:, :1]) < 0.9, np.cross(w, [1.0, 0.0, 0.0]), np.cross(w, [0.0, 1.0, 0.0]))
        q[opposite] = np.concatenate([np.zeros((len(w), 1)), unit(perp)], -1)
    return unit(q)


def qaxis(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotation by angle (...) about unit axis (..., 3)."""
    h = 0.5 * np.asarray(angle)[..., None]
    return np.concatenate([np.cos(h), np.sin(h) * axis], -1)


def qpow(q: np.ndarray, t: float) -> np.ndarray:
    """The fraction t of rotation q (slerp from identity)."""
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2.0 * np.arctan2(s, q[..., 0])
    return qaxis(q[..., 1:] / np.maximum(s, 1e-12)[..., None], t * angle)


def twist_onto(axis: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Rotation about axis taking the perpendicular part of `have` onto that of `want`."""
    have = have - np.sum(have * axis, -1, keepdims=True) * axis
    want = want - np.sum(want * axis, -1, keepdims=True) * axis
    angle = np.arctan2(np.sum(np.cross(have, want) * axis, -1), np.sum(have * want, -1))
    return qaxis(axis, angle)


def slerp_resample(dirs: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample unit directions (frames, n, 3) from src_fps to dst_fps by spherical interpolation."""
    n_out = int(np.floor((len(dirs) - 1) * dst_fps / src_fps + 1e-6)) + 1
    s = np.arange(n_out) * (src_fps / dst_fps)
    i0 = np.minimum(np.floor(s + 1e-6).astype(int), len(dirs) - 1)
    i1 = np.minimum(i0 + 1, len(dirs) - 1)
    f = np.clip(s - i0, 0.0, 1.0)[:, None, None]
    a, b = unit(dirs[i0].astype(np.float64)), unit(dirs[i1].astype(np.float64))
    theta = np.arccos(np.clip(np.sum(a * b, -1, keepdims=True), -1.0, 1.0))
    sin = np.sin(theta)
    small = sin < 1e-6
    wa = np.where(small, 1.0 - f, np.sin((1.0 - f) * theta) / np.where(small, 1.0, sin))
    wb = np.where(small, f, np.sin(f * theta) / np.where(small, 1.0, sin))
    return unit(wa * a + wb * b)


def continuous(q: np.ndarray, before: np.ndarray | None = None, after: np.ndarray | None = None) -> np.ndarray:
    """q (frames, 4) with signs such that consecutive quaternions, and the kept keys either side when given (the
    range of keys q replaces), have a positive dot product: Blender interpolates the components, so q then -q makes
    the bone spin between keys. When both kept keys are given and no continuous chain joins them, the one unavoidable
    flip goes to the largest step (the dot nearest 0, where either sign is about as far)."""
    chain = np.array(([before] if before is not None else []) + list(q) + ([after] if after is not None else []))
    d = np.sum(chain[1:] * chain[:-1], -1)
    signs = np.cumprod(np.r_[1.0, np.where(d < 0, -1.0, 1.0)])
    if after is not None and signs[-1] < 0:  # the kept key after keeps its sign
        if before is None:
            signs = -signs
        else:
            signs[np.argmin(np.abs(d)) + 1:] *= -1
    chain = chain * signs[:, None]
    return chain[int(before is not None):len(chain) - int(after is not None)]
