"""The project's clip format, the paper's windowing and filters, a torch Dataset, and the TED LMDB converter.

On disk a dataset is a folder of three files, written once and memory-mapped when read (no pickle):
  index.json   skeleton, rates, per-clip offsets and word timings, a content hash and the source's description
  poses.f32    all clips' normalised direction vectors, float32 (frames, pose_dim), little-endian
  audio.i16    all clips' 16 kHz mono audio, int16, little-endian
Windows follow FACTS §11 and the official DataPreprocessor: 42-frame spans with stride 10 that must hold at least
2 overlapping words and pass the motion filters; training uses their first 34 frames and 36,267 audio samples from
floor(start / frames * samples), extended by mirroring at a clip's end. The motion filters run on joints chained from
the stored directions with the fixed bone lengths (the official code uses the dataset's raw joints).
"""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from model_core.timing import FPS, SAMPLE_RATE, TRAIN_CLIP_SAMPLES
from model_core.skeleton import Skeleton, from_directions, get_skeleton, joints_to_directions, to_joints

from .legacy_lmdb import legacy_records

FORMAT = "diffgesture-clips"
VERSION = 1
N_POSES = 34
STRIDE = 10
CACHE_FRAMES = int(round(N_POSES * 1.25))  # 42: the span the official LMDB cache keeps per window
WRIST_JOINTS = {"ted_gesture": (6, 9), "ted_expressive": (6, 7)}


@dataclass
class Clip:
    """One continuous clip: normalised poses (frames, pose_dim) at 15 fps, 16 kHz audio, words [(w, start, end)]."""

    name: str
    poses: np.ndarray
    audio: np.ndarray
    words: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def write_dataset(out: str | Path, clips: Iterable[Clip], skeleton: Skeleton, source: dict) -> dict:
    """Stream clips into the on-disk format and return the index (with its content hash)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    entries, n_frames, n_samples = [], 0, 0
    with open(out / "poses.f32", "wb") as fp, open(out / "audio.i16", "wb") as fa:
        for clip in clips:
            poses = np.ascontiguousarray(clip.poses, dtype="<f4")
            if poses.ndim != 2 or poses.shape[1] != skeleton.pose_dim:
                raise ValueError(f"clip {clip.name}: poses {poses.shape}, expected (frames, {skeleton.pose_dim})")
            audio = (np.clip(clip.audio, -1, 1) * 32767).round().astype("<i2")
            fp.write(poses.tobytes())
            fa.write(audio.tobytes())
            h.update(poses.tobytes())
            h.update(audio.tobytes())
            entries.append({"name": clip.name, "frame_offset": n_frames, "n_frames": len(poses),
                            "sample_offset": n_samples, "n_samples": len(audio),
                            "words": [[str(w), float(s), float(e)] for w, s, e in clip.words], "meta": clip.meta})
            n_frames += len(poses)
            n_samples += len(audio)
    index = {"format": FORMAT, "version": VERSION, "skeleton": skeleton.name, "pose_dim": skeleton.pose_dim,
             "fps": FPS, "sample_rate": SAMPLE_RATE, "n_frames": n_frames, "n_samples": n_samples,
             "sha256": h.hexdigest(), "source": source, "clips": entries}
    (out / "index.json").write_text(json.dumps(index))
    return index


def read_index(root: str | Path) -> dict:
    """The index of a converted dataset, checked for format and version."""
    path = Path(root) / "index.json"
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {root} (index.json missing)")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT or index.get("version", 0) > VERSION:
        raise ValueError(f"{root} is not a {FORMAT} v{VERSION} dataset")
    return index


def fixed_length_audio(audio: np.ndarray, length: int = TRAIN_CLIP_SAMPLES) -> np.ndarray:
    """Cut to `length` samples or extend the end by mirroring (np.pad 'symmetric', as the official loader)."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)), mode="symmetric") if len(audio) else np.zeros(length, audio.dtype)


def motion_ok(poses: np.ndarray, skel: Skeleton) -> bool:
    """The MotionPreprocessor filters of FACTS §11 on one window of normalised poses."""
    joints = to_joints(poses.reshape(len(poses), skel.n_bones, 3) + skel.mean, skel)
    mean_joints = to_joints(skel.mean[None], skel)
    if np.mean(np.abs(joints - mean_joints)) < 0.02:
        return False
    spine = joints[:, 1] - joints[:, 0]
    cos = spine @ np.array([0.0, -1.0, 0.0]) / np.maximum(np.linalg.norm(spine, axis=-1), 1e-8)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    if angle.max() > 30 or angle.mean() > 20:
        return False
    var = [np.sum(np.var(joints[:, j], axis=0)) for j in WRIST_JOINTS[skel.name]]
    return not all(v < 0.0014 for v in var)


def make_windows(index: dict, poses: np.ndarray, motion_filters: bool = True, min_words: int = 2,
                 clips: Iterable[int] | None = None) -> np.ndarray:
    """Rows (clip, start frame, audio start sample) of the windows that pass the filters."""
    skel = get_skeleton(index["skeleton"])
    rows = []
    for ci in (range(len(index["clips"])) if clips is None else clips):
        c = index["clips"][ci]
        w_start = np.array([w[1] for w in c["words"]], dtype=np.float64)
        w_end = np.array([w[2] for w in c["words"]], dtype=np.float64)
        for s in range(0, c["n_frames"] - CACHE_FRAMES + 1, STRIDE):
            t0, t1 = s / FPS, (s + CACHE_FRAMES) / FPS
            if min_words and np.count_nonzero((w_start < t1) & (w_end > t0)) < min_words:  # overlapping words
                continue
            win = poses[c["frame_offset"] + s: c["frame_offset"] + s + CACHE_FRAMES]
            if motion_filters and not motion_ok(np.asarray(win), skel):
                continue
            rows.append((ci, s, int(np.floor(s / c["n_frames"] * c["n_samples"]))))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


class WindowDataset(torch.utils.data.Dataset):
    """34-frame training windows (poses (34, D), audio (36267,)) over a converted dataset, memory-mapped."""

    def __init__(self, root: str | Path, motion_filters: bool = True, min_words: int = 2,
                 clips: Iterable[int] | None = None):
        self.root = Path(root)
        self.index = read_index(root)
        self.skeleton = get_skeleton(self.index["skeleton"])
        self._poses: np.ndarray | None = None
        self._audio: np.ndarray | None = None
        self.windows = make_windows(self.index, self.poses, motion_filters, min_words, clips)

    @property
    def poses(self) -> np.ndarray:
        if self._poses is None:  # opened lazily so that each DataLoader worker maps the file itself
            self._poses = np.memmap(self.root / "poses.f32", dtype="<f4", mode="r",
                                    shape=(self.index["n_frames"], self.index["pose_dim"]))
        return self._poses

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = np.memmap(self.root / "audio.i16", dtype="<i2", mode="r", shape=(self.index["n_samples"],))
        return self._audio

    @property
    def sha256(self) -> str:
        return self.index["sha256"]

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_poses": None, "_audio": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ci, s, a = (int(v) for v in self.windows[i])
        c = self.index["clips"][ci]
        poses = np.array(self.poses[c["frame_offset"] + s: c["frame_offset"] + s + N_POSES], dtype=np.float32)
        end = min(a + TRAIN_CLIP_SAMPLES, c["n_samples"])
        audio = np.asarray(self.audio[c["sample_offset"] + a: c["sample_offset"] + end], dtype=np.float32) / 32767
        return torch.from_numpy(poses), torch.from_numpy(fixed_length_audio(audio).astype(np.float32))


# ---- the official TED LMDB databases ---------------------------------------------------------------------------

def resample_poses(poses: np.ndarray, duration: float, fps: int = FPS) -> np.ndarray:
    """Linear resampling to `fps` over `duration` seconds (the official resample_pose_seq, extrapolating)."""
    n = len(poses)
    x_new = np.arange(0, n, n / (duration * fps))
    i = np.clip(np.floor(x_new).astype(int), 0, max(n - 2, 0))
    w = (x_new - i)[:, None, None]
    nxt = np.minimum(i + 1, n - 1)
    return (poses[i] * (1 - w) + poses[nxt] * w).astype(poses.dtype)


def lmdb_records(path: str | Path, decode: Callable[[bytes], dict] = pickle.loads) -> Iterator[tuple[str, dict]]:
    """(key, video) records of an LMDB read in this process: re-exported copies whose values `decode` reads."""
    import lmdb
    if not Path(path).exists():
        raise FileNotFoundError(f"no LMDB at {path}")
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=Path(path).is_dir())
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                try:
                    video = decode(bytes(value))
                except Exception as e:
                    raise ValueError(
                        f"{path}: record {bytes(key)!r} cannot be decoded ({type(e).__name__}). The official TED "
                        "databases were written by pyarrow.serialize: convert them with `python3 build.py "
                        "convert-ted SRC OUT --skeleton NAME` (or pass --legacy-python)") from None
                yield key.decode(errors="replace"), video
    finally:
        env.close()


def iter_lmdb_clips(path: str | Path, skel: Skeleton, decode: Callable[[bytes], dict] | None = None,
                    legacy_python: str | Path | None = None) -> Iterator[Clip]:
    """Clips of an official TED Gesture / Expressive LMDB (per video: vid, clips) as normalised direction vectors.

    legacy_python: an interpreter with pyarrow 11 (requirements/ted_lmdb.txt) that decodes the official
    pyarrow.serialize records (training/legacy_lmdb.py); without it the values are read with `decode` (pickle)."""
    records = legacy_records(path, legacy_python) if legacy_python else lmdb_records(path, decode or pickle.loads)
    for key, video in records:
        for k, clip in enumerate(video["clips"]):
            joints = np.asarray(clip["skeletons_3d"], dtype=np.float32)
            if len(joints) == 0:
                continue
            joints = joints.reshape(len(joints), len(skel.joints), 3)
            if "start_time" in clip and "end_time" in clip:
                joints = resample_poses(joints, float(clip["end_time"]) - float(clip["start_time"]))
            poses = from_directions(joints_to_directions(joints, skel), skel)
            meta = {"vid": str(video["vid"]), "key": key,
                    **{f: float(clip[f]) for f in ("start_frame_no", "end_frame_no", "start_time", "end_time")
                       if f in clip}}
            t0 = meta.get("start_time", 0.0)  # word times are absolute in the video
            words = [(w[0], float(w[1]) - t0, float(w[2]) - t0) for w in clip["words"]]
            yield Clip(f"{video['vid']}_{k:03d}", poses, np.asarray(clip["audio_raw"], dtype=np.float32),
                       words, meta)


def convert_lmdb(src: str | Path, out: str | Path, skeleton: str, decode: Callable[[bytes], dict] | None = None,
                 legacy_python: str | Path | None = None) -> dict:
    """Convert an official LMDB into the project format; returns the written index."""
    skel = get_skeleton(skeleton)
    return write_dataset(out, iter_lmdb_clips(src, skel, decode, legacy_python), skel,
                         {"kind": "ted_lmdb", "path": str(src)})


def main(argv: list[str] | None = None) -> None:
    """python -m training.data SRC_LMDB OUT --skeleton ted_gesture|ted_expressive [--legacy-python PY]"""
    import argparse
    p = argparse.ArgumentParser(description="Convert an official TED LMDB to the project's clip format "
                                "(`python3 build.py convert-ted` runs this with the pinned pyarrow reader).")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--skeleton", required=True, choices=["ted_gesture", "ted_expressive"])
    p.add_argument("--legacy-python", default=None,
                   help="interpreter with pyarrow 11 and lmdb (requirements/ted_lmdb.txt) to read the official "
                        "pyarrow.serialize records; without it the values must be pickles (re-exported copies)")
    a = p.parse_args(argv)
    try:
        index = convert_lmdb(a.src, a.out, a.skeleton, legacy_python=a.legacy_python)
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(index['clips'])} clips, {index['n_frames']} frames, sha256 {index['sha256'][:12]}")


if __name__ == "__main__":
    main()
