"""The two DiffGesture skeletons as data, and conversions between their representations (numpy only).

A pose is a set of unit bone-direction vectors (parent -> child). The network works on *normalised* vectors
(direction minus the dataset's mean direction, flattened to pose_dim = 3 * n_bones) in the dataset's own
coordinate frame. Consumers should use the canonical character frame instead: right-handed, +Z up, the character
facing -Y with its left at +X (Blender's convention). See ../shared/reference/SKELETON.md for the evidence.

This module needs no torch, so the Blender add-on can import it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """One skeleton: joints, parent->child bones in chaining order, fixed bone lengths, mean pose, frame."""

    name: str
    joints: tuple[str, ...]
    bones: tuple[str, ...]  # semantic name of each direction vector, used by retargeting
    pairs: tuple[tuple[int, int], ...]  # (parent joint, child joint) for each bone, parents first
    lengths: tuple[float, ...]
    mean_dir_vec: tuple[float, ...]  # official config value, flattened (pose_dim,)
    dataset_to_canonical: tuple[tuple[int, ...], ...]  # 3x3 proper rotation, canonical = M @ dataset

    @property
    def n_bones(self) -> int:
        return len(self.pairs)

    @property
    def pose_dim(self) -> int:
        return 3 * len(self.pairs)

    @property
    def mean(self) -> np.ndarray:
        """Mean direction vectors, (n_bones, 3), dataset frame."""
        return np.asarray(self.mean_dir_vec, dtype=np.float32).reshape(-1, 3)

    @property
    def rotation(self) -> np.ndarray:
        return np.asarray(self.dataset_to_canonical, dtype=np.float64)

    def bone_index(self, bone: str) -> int:
        return self.bones.index(bone)


def _side(prefix: str, names: list[str]) -> list[str]:
    return [f"{prefix}_{n}" for n in names]


# TED Gesture: joints from Human3.6M via Trimodal's loader. Frame: +x = person's right, +y down, faces +z.
TED_GESTURE = Skeleton(
    name="ted_gesture",
    joints=("spine", "neck", "nose", "head", "left_shoulder", "left_elbow", "left_wrist",
            "right_shoulder", "right_elbow", "right_wrist"),
    bones=("spine", "neck_nose", "nose_head", "left_clavicle", "left_upper_arm", "left_forearm",
           "right_clavicle", "right_upper_arm", "right_forearm"),
    pairs=((0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6), (1, 7), (7, 8), (8, 9)),
    lengths=(0.26, 0.18, 0.14, 0.22, 0.36, 0.33, 0.22, 0.36, 0.33),
    mean_dir_vec=(0.0154009, -0.9690125, -0.0884354, -0.0022264, -0.8655276, 0.4342174, -0.0035145, -0.8755367,
                  -0.4121039, -0.9236511, 0.3061306, -0.0012415, -0.5155854, 0.8129665, 0.0871897, 0.2348464,
                  0.1846561, 0.8091402, 0.9271948, 0.2960011, -0.013189, 0.5233978, 0.8092403, 0.0725451,
                  -0.2037076, 0.1924306, 0.8196916),
    # canonical X (left) = -x, Y (back) = -z, Z (up) = -y
    dataset_to_canonical=((-1, 0, 0), (0, 0, -1), (0, -1, 0)),
)

_FINGERS = ("index", "middle", "pinky", "ring", "thumb")
_HAND_JOINTS = [f"{f}{i}" for f in _FINGERS for i in (1, 2, 3)]
_HAND_BONES = [f"{f}{s}" for f in _FINGERS for s in ("_base", "1", "2")]


def _hand_pairs(wrist: int, first: int) -> list[tuple[int, int]]:
    pairs = []
    for f in range(5):
        j = first + 3 * f
        pairs += [(wrist, j), (j, j + 1), (j + 1, j + 2)]
    return pairs


# TED Expressive: SMPL-X joint selection. Frame: +x = person's left, +y down, faces -z (camera frame).
TED_EXPRESSIVE = Skeleton(
    name="ted_expressive",
    joints=("spine", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
            "right_wrist", *_side("left", _HAND_JOINTS), *_side("right", _HAND_JOINTS),
            "nose", "right_eye", "left_eye", "right_ear", "left_ear"),
    bones=("spine", "left_clavicle", "right_clavicle", "left_upper_arm", "left_forearm", *_side("left", _HAND_BONES),
           "right_upper_arm", "right_forearm", *_side("right", _HAND_BONES),
           "neck_nose", "nose_right_eye", "nose_left_eye", "right_eye_ear", "left_eye_ear"),
    pairs=((0, 1), (1, 2), (1, 3), (2, 4), (4, 6), *_hand_pairs(6, 8), (3, 5), (5, 7), *_hand_pairs(7, 23),
           (1, 38), (38, 39), (38, 40), (39, 41), (40, 42)),
    lengths=(0.26, 0.22, 0.22, 0.36, 0.33,
             0.137, 0.044, 0.031, 0.144, 0.042, 0.033, 0.127, 0.027, 0.026, 0.134, 0.039, 0.033, 0.068, 0.042, 0.036,
             0.36, 0.33,
             0.137, 0.044, 0.031, 0.144, 0.042, 0.033, 0.127, 0.027, 0.026, 0.134, 0.039, 0.033, 0.068, 0.042, 0.036,
             0.18, 0.14, 0.14, 0.15, 0.15),
    mean_dir_vec=(-0.0737964, -0.9968923, -0.1082858, 0.9111595, 0.2399522, -0.102547, -0.8936886, 0.3131501,
                  -0.1039348, 0.2093927, 0.958293, 0.0824881, -0.1689021, -0.0353824, -0.7588258, -0.2794763,
                  -0.2495191, -0.614666, -0.3877234, 0.005006, -0.5301695, -0.5098616, 0.2257808, 0.0053111,
                  -0.2393621, -0.1022204, -0.6583039, -0.4992898, 0.1228059, -0.3292085, -0.4753748, 0.2132857,
                  0.1742853, -0.2062069, 0.2305175, -0.5897119, -0.5452555, 0.1303197, -0.2181693, -0.5221036,
                  0.1211322, 0.1337591, -0.2164441, 0.0743345, -0.6464546, -0.5284583, 0.0457585, -0.319634,
                  -0.5074904, 0.1537192, 0.1365934, -0.4354402, -0.3836682, -0.3850554, -0.4927187, -0.2417618,
                  -0.3054556, -0.3556116, -0.281753, -0.5164358, -0.3064435, 0.9284261, -0.067134, 0.2764367,
                  0.006997, -0.7365526, 0.2421269, -0.225798, -0.6387642, 0.3788997, 0.0283412, -0.5451686,
                  0.5753376, 0.1935219, 0.0632555, 0.2122412, -0.0624179, -0.6755542, 0.5212831, 0.1043523,
                  -0.345288, 0.5443628, 0.128029, 0.2073687, 0.2197118, 0.2821399, -0.580695, 0.573988, 0.0786667,
                  -0.2133071, 0.5532452, -0.0006157, 0.1598754, 0.2093099, 0.124119, -0.6504359, 0.5465003,
                  0.0114155, -0.3203954, 0.5512083, 0.0489287, 0.1676814, 0.4190787, -0.4018607, -0.3912126,
                  0.4841548, -0.2668508, -0.3557675, 0.3416916, -0.2419564, -0.5509825, 0.0485515, -0.6343101,
                  -0.6817347, -0.4705639, -0.6380668, 0.4641643, 0.4540192, -0.6486361, 0.4604001, -0.3256226,
                  0.1883097, 0.8057457, 0.3257385, 0.1292366, 0.815372),
    # canonical X (left) = x, Y (back) = z, Z (up) = -y
    dataset_to_canonical=((1, 0, 0), (0, 0, 1), (0, -1, 0)),
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (TED_GESTURE, TED_EXPRESSIVE)}


def get_skeleton(name_or_dim: str | int) -> Skeleton:
    """Look a skeleton up by name or by pose_dim (27 / 126); raise ValueError naming the known ones."""
    for s in SKELETONS.values():
        if name_or_dim in (s.name, s.pose_dim):
            return s
    raise ValueError(f"unknown skeleton {name_or_dim!r}; known: "
                     + ", ".join(f"{s.name} (pose_dim {s.pose_dim})" for s in SKELETONS.values()))


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-8)


def to_directions(x: np.ndarray, skel: Skeleton, normalize: bool = True) -> np.ndarray:
    """Normalised network output (..., pose_dim) -> direction vectors (..., n_bones, 3), dataset frame."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != skel.pose_dim:
        raise ValueError(f"{skel.name} poses have {skel.pose_dim} values per frame, got {x.shape[-1]}")
    dirs = x.reshape(*x.shape[:-1], skel.n_bones, 3) + skel.mean
    return _normalize(dirs) if normalize else dirs


def from_directions(dirs: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Direction vectors (..., n_bones, 3) in the dataset frame -> normalised network values (..., pose_dim)."""
    dirs = _normalize(np.asarray(dirs, dtype=np.float32)) - skel.mean
    return dirs.reshape(*dirs.shape[:-2], skel.pose_dim).astype(np.float32)


def to_joints(dirs: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Chain direction vectors (..., n_bones, 3) with the fixed bone lengths; root joint at the origin."""
    dirs = np.asarray(dirs)
    joints = np.zeros((*dirs.shape[:-2], len(skel.joints), 3), dtype=dirs.dtype)
    for b, (parent, child) in enumerate(skel.pairs):
        joints[..., child, :] = joints[..., parent, :] + skel.lengths[b] * dirs[..., b, :]
    return joints


def joints_to_directions(joints: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Joint positions (..., n_joints, 3) -> unit direction vectors (..., n_bones, 3)."""
    joints = np.asarray(joints)
    parents = [p for p, _ in skel.pairs]
    children = [c for _, c in skel.pairs]
    return _normalize(joints[..., children, :] - joints[..., parents, :])


def dataset_to_canonical(v: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Rotate vectors (..., 3) from the skeleton's dataset frame into the canonical character frame."""
    return np.asarray(v) @ skel.rotation.T.astype(np.asarray(v).dtype)


def canonical_to_dataset(v: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Inverse of dataset_to_canonical (the rotation is orthonormal)."""
    return np.asarray(v) @ skel.rotation.astype(np.asarray(v).dtype)


def poses_to_canonical(x: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Normalised network output (..., pose_dim) -> unit directions (..., n_bones, 3) in the canonical frame."""
    return dataset_to_canonical(to_directions(x, skel), skel).astype(np.float32)


def canonical_to_poses(dirs: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Canonical-frame directions (..., n_bones, 3) -> normalised network values (..., pose_dim)."""
    return from_directions(canonical_to_dataset(dirs, skel), skel)


# The arm bones keep_out_of_torso turns, parent first; both skeletons name them alike.
ARM_BONES = ("left_upper_arm", "left_forearm", "right_upper_arm", "right_forearm")


def _axis_offset(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """p minus its closest point on the segment a-b (..., 3)."""
    ab = b - a
    t = np.clip(np.sum((p - a) * ab, -1, keepdims=True) / np.maximum(np.sum(ab * ab, -1, keepdims=True), 1e-12), 0, 1)
    return p - (a + t * ab)


def torso_axis(joints: np.ndarray, skel: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """The torso's axis (..., 3) x 2: from the neck down the spine bone and as far again below its root (the
    belly and hips, which the skeletons have no joints for)."""
    spine, neck = skel.pairs[skel.bone_index("spine")]
    top, root = joints[..., neck, :], joints[..., spine, :]
    return top, 2 * root - top


def torso_radius(skel: Skeleton) -> float:
    """The torso, for keep_out_of_torso: a capsule about torso_axis whose radius is half a clavicle, or less where
    the rest (mean) pose's own elbows and wrists come closer, so the rest pose never moves."""
    joints = to_joints(_normalize(skel.mean.astype(np.float64)), skel)
    ends = [skel.pairs[skel.bone_index(b)][1] for b in ARM_BONES]
    closest = min(np.linalg.norm(_axis_offset(joints[j], *torso_axis(joints, skel))) for j in ends)
    return float(min(0.5 * skel.lengths[skel.bone_index("left_clavicle")], 0.9 * closest))


def keep_out_of_torso(dirs: np.ndarray, skel: Skeleton, steps: int = 30) -> np.ndarray:
    """Unit directions (..., n_bones, 3) whose elbows and wrists lie outside the torso (torso_axis, torso_radius):
    an arm bone whose end falls inside is turned about its own joint, towards pointing straight away from the
    torso, just far enough (bisection) to bring the end to the capsule's surface; the upper arm before the forearm.
    Every other bone, and every frame where nothing enters, is left as it is."""
    out = np.array(dirs, dtype=np.float64)
    r = torso_radius(skel)
    for bone in ARM_BONES:
        b = skel.bone_index(bone)
        parent, child = skel.pairs[b]
        joints = to_joints(out, skel)
        top, bottom = torso_axis(joints, skel)
        start, length = joints[..., parent, :], skel.lengths[b]

        def inside(d: np.ndarray) -> np.ndarray:
            return np.linalg.norm(_axis_offset(start + length * d, top, bottom), axis=-1, keepdims=True) < r

        d = out[..., b, :]
        enters = inside(d)
        if not enters.any():
            continue
        away = _axis_offset(start, top, bottom)  # from the torso's axis out through the bone's own joint
        away = np.where(np.linalg.norm(away, axis=-1, keepdims=True) > 1e-6, away, start - top)
        away = _normalize(away)
        lo, hi = np.zeros_like(enters, dtype=np.float64), np.ones_like(enters, dtype=np.float64)
        for _ in range(steps):  # the least turn from d towards `away` that leaves the torso
            mid = (lo + hi) / 2
            still = inside(_normalize((1 - mid) * d + mid * away))
            lo, hi = np.where(still, mid, lo), np.where(still, hi, mid)
        out[..., b, :] = np.where(enters, _normalize((1 - hi) * d + hi * away), d)
    return out.astype(np.asarray(dirs).dtype)


def at_intensity(poses: np.ndarray, intensity: float) -> np.ndarray:
    """Normalised poses as sampled, with the gesture's amplitude about the mean pose scaled by `intensity` (0 = the
    mean pose, 1 = as sampled): the one place intensity is applied. Results and takes keep the poses as sampled and
    the intensity beside them."""
    return poses * np.float32(intensity) if intensity != 1 else poses


def as_sampled(poses: np.ndarray, intensity: float, source: str) -> np.ndarray:
    """The poses as sampled from a record of the first format, which held them already scaled by `intensity`; at
    intensity 0 they are the rest pose and nothing can be recovered (ValueError naming `source`)."""
    if intensity == 0:
        raise ValueError(f"{source} was generated at intensity 0 (the rest pose) by an earlier version, so it holds "
                         "no motion to keep or scale: generate it again")
    return poses / np.float32(intensity) if intensity != 1 else poses


def directions_at(poses: np.ndarray, intensity: float, skel: Skeleton) -> np.ndarray:
    """Canonical unit directions of normalised poses as sampled, at `intensity` (at_intensity): above 1, where the
    wider gesture would put an elbow or a wrist inside the torso it is turned back out (keep_out_of_torso)."""
    dirs = poses_to_canonical(at_intensity(poses, intensity), skel)
    return keep_out_of_torso(dirs, skel) if intensity > 1 else dirs
