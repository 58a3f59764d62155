"""Re-rolling a frame range of a generated clip: regenerate only that span with a new seed, the rest kept.

This is inpainting with the model's own means. The windows that cover the range start 4 frames before it and are
seeded with those kept frames (the seed-pose mechanism that chains windows in a long clip, n_pre_poses = 4);
consecutive windows are chained as in ClipRun, each given the audio under its own frames. Every kept frame that
falls inside a window (the seed frames, and the frames after the range up to the last window's end) is held to the
kept motion while sampling: after each sampler step its frames of x_t are replaced by the kept motion forward-noised
to the step's t (network.add_noise; RePaint, Lugmayr et al. 2022), so the new motion is sampled to meet them. The
first and last BLEND frames of the range are then cross-faded with the kept motion. Frames outside the range are the
input's own values, bit for bit.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .network import PoseDiffusion, add_noise
from .pipeline import ClipRun, KnownFrames, Progress, resolved, save_result
from .samplers import randn
from .settings import GenerationSettings
from .timing import FPS, SAMPLE_RATE

BLEND = 3  # frames of the range at each end cross-faded with the kept motion
HOLD = 8  # kept frames after the range that the last window holds (when the clip has them)


def check_range(frames: int, start: int, end: int) -> None:
    """Refuse a range that is not whole frames start <= end inside a clip of `frames` frames (0-based, inclusive)."""
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"the range's {name} must be a whole frame number, not {value!r}")
    if start > end:
        raise ValueError(f"the range {start}-{end} is empty: its start comes after its end")
    if start < 0 or end >= frames:
        raise ValueError(f"the range {start}-{end} is outside the clip, whose frames are 0-{frames - 1} (15 fps)")


def windows_for(frames: int, start: int, end: int, n_poses: int = 34, n_pre: int = 4) -> tuple[int, int]:
    """(first frame, number of windows) covering the range: the first window starts n_pre frames before it (fewer
    at the clip's start), windows advance by n_poses - n_pre, and the last holds up to HOLD kept frames after it."""
    first = max(0, start - n_pre)
    reach = min(frames - 1, end + HOLD)  # the last frame the windows must cover
    stride = n_poses - n_pre
    return first, 1 + max(0, -(-(reach + 1 - first - n_poses) // stride))


def _holder(model: PoseDiffusion, kept: np.ndarray, mask: np.ndarray, gen: torch.Generator) -> KnownFrames | None:
    """The known-frame hook of one window: frames where mask is set are put back to q(x_t | kept) after every step
    (exactly the kept values at t = 0); None when the window holds nothing."""
    if not mask.any():
        return None
    device = next(model.parameters()).device
    values = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.float32)).to(device)
    where = torch.from_numpy(mask).to(device).view(1, -1, 1)

    def known(x: torch.Tensor, t: int) -> torch.Tensor:
        held = values if t == 0 else add_noise(model.schedule, values, randn(x.shape, gen, x.device, x.dtype), t)
        return torch.where(where, held.to(x.dtype), x)
    return known


def blend_weights(frames: int, start: int, end: int, blend: int = BLEND) -> np.ndarray:
    """Weight of the new motion for each frame of the range: ramps of `blend` frames up from the kept motion before
    it and down to the kept motion after it (no ramp at the clip's own ends)."""
    f = np.arange(start, end + 1, dtype=np.float32)
    w = np.ones_like(f)
    if start > 0:
        w = np.minimum(w, (f - start + 1) / (blend + 1))
    if end < frames - 1:
        w = np.minimum(w, (end - f + 1) / (blend + 1))
    return w


def reroll(model: PoseDiffusion, audio: np.ndarray, poses: np.ndarray, start: int, end: int,
           settings: GenerationSettings, progress: Callable[[Progress], None] | None = None,
           cancel: Callable[[], bool] | None = None, blend: int = BLEND) -> np.ndarray:
    """The clip's normalised poses as sampled (V, F, D) at 15 fps, with frames start..end (inclusive) sampled again
    from `settings` (its seed) for the mono 16 kHz audio; every other frame is returned unchanged.
    settings.variations is taken from the poses."""
    poses = np.asarray(poses, dtype=np.float32)
    cfg = model.cfg
    if poses.ndim != 3 or poses.shape[2] != cfg.pose_dim:
        raise ValueError(f"the poses must have shape (variations, frames, {cfg.pose_dim}) for this checkpoint, "
                         f"not {poses.shape}")
    v, frames, _ = poses.shape
    check_range(frames, start, end)
    settings = dataclasses.replace(settings, variations=v)
    settings.validate()
    settings = resolved(settings, model)[0]
    first, n_win = windows_for(frames, start, end, cfg.n_poses, cfg.n_pre_poses)
    seeded = start - first == cfg.n_pre_poses  # a range that starts within 4 frames of the clip's start: no seed
    run = ClipRun(model, audio, settings, poses[:, first:start] if seeded else None, first, n_win)
    stride = cfg.n_poses - cfg.n_pre_poses
    while not run.done:
        lo = first + stride * run.w
        idx = np.arange(lo, lo + cfg.n_poses)
        mask = ((idx < start) | (idx > end)) & (idx < frames)
        kept = np.zeros((v, cfg.n_poses, cfg.pose_dim), np.float32)
        kept[:, mask] = poses[:, idx[mask]]
        run.sample_next(progress, cancel, "re-roll", _holder(model, kept, mask, run.gen_dev))
    new = np.concatenate(run.chunks, axis=1)[:, start - first:end + 1 - first]
    w = blend_weights(frames, start, end, blend).reshape(1, -1, 1)
    out = poses.copy()
    out[:, start:end + 1] = poses[:, start:end + 1] * (1 - w) + new * w
    return out


def read_take(path: str | Path) -> dict:
    """A result file to re-roll (protocol.read_result) with its poses as sampled (protocol.sampled_poses), or
    ValueError saying why it is not one; its metadata and its poses' shape are checked (protocol.check_take) before
    the poses are read."""
    from .files import regular_file_problem
    from .protocol import check_take, is_result_file, read_result, result_header, sampled_poses
    path = Path(path)
    problem = regular_file_problem(path)
    if problem:
        raise ValueError(f"the result file {path} {problem}")
    if not is_result_file(path):
        raise ValueError(f"{path} is not a DiffGesture result (.npz written by generate or reroll)")
    check_take(*result_header(path), path.name)
    take = read_result(path)
    return {**take, "poses": sampled_poses(take, path.name)}


def reroll_file(ckpt, result_path: str | Path, audio_path: str | Path, output: str | Path, start: int, end: int,
                overrides: dict | None = None, progress: Callable[[Progress], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> dict:
    """Re-roll frames start..end (15 fps, inclusive) of an earlier result file and write a new one; return its
    summary. The take's own settings are used, with `overrides` (the new seed ...); the take must come from this
    checkpoint and this audio."""
    from .audio import load_audio
    from .pipeline import output_paths
    take = read_take(result_path)
    output_paths(output, len(take["poses"]), ckpt.skeleton, (audio_path, result_path))
    meta = take["meta"]
    if meta.get("checkpoint_sha256") != ckpt.sha256:
        raise ValueError(f"{Path(result_path).name} was generated with another checkpoint (sha256 "
                         f"{str(meta.get('checkpoint_sha256'))[:12]}, this one {ckpt.sha256[:12]}): re-roll it with "
                         "the checkpoint that made it")
    if meta.get("fps") != FPS:
        raise ValueError(f"{Path(result_path).name} is at {meta.get('fps')} fps; results are at {FPS}")
    base = {k: v for k, v in meta.get("settings", {}).items() if k in {f.name for f in
                                                                      dataclasses.fields(GenerationSettings)}}
    settings = GenerationSettings.from_dict({**base, **(overrides or {})})
    audio = load_audio(audio_path)
    duration = len(audio) / SAMPLE_RATE
    if abs(duration - float(meta.get("duration", duration))) > 1.0 / FPS:
        raise ValueError(f"{Path(audio_path).name} lasts {duration:.2f} s but the take was made from "
                         f"{float(meta['duration']):.2f} s of audio: give the take's own audio")
    poses = take["poses"]
    check_range(poses.shape[1], start, end)
    settings, how = resolved(dataclasses.replace(settings, variations=poses.shape[0]), ckpt.model)
    t0 = time.perf_counter()
    out = reroll(ckpt.model, audio, poses, start, end, settings, progress, cancel)
    return save_result(ckpt, output, out, settings, audio_path, len(audio), how, time.perf_counter() - t0)
