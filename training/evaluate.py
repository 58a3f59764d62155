"""Evaluate a checkpoint on held-out windows with the paper's metrics, for several samplers and two baselines.

    python -m training.evaluate --checkpoint X --data Y [--samplers paper,fast:10,fast:25,fast:50]
                                [--extractor FILE] [--baselines] [--json out.json]

As the official evaluation: seeds are the first 4 ground-truth frames, all 34 generated frames are scored, the
WavEncoder normalises with batch statistics (bn_mode "official"), batches of 128 without shuffling (drop_last).
Baselines: "shuffled audio" (the same model and first sampler, audio permuted across the clips of each batch)
and "mean pose" (every frame the dataset mean). Without --extractor, one is trained on the evaluation data.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch

from model_core.checkpoint import load_checkpoint
from model_core.pipeline import generate, resolve_device, sample_window
from model_core.settings import GenerationSettings, preset

from .data import WindowDataset
from .metrics import BeatConsistency, diversity, fgd, joint_mae, load_extractor, train_extractor
from .procedural import loudness


def parse_sampler(spec: str) -> tuple[str, GenerationSettings]:
    """'paper' or 'fast:K' -> (label, settings with the official batch-statistics BatchNorm)."""
    if spec == "paper":
        return spec, preset("paper")
    name, _, k = spec.partition(":")
    if name != "fast":
        raise ValueError(f"unknown sampler {spec!r}: use paper or fast:K")
    return spec, GenerationSettings(sampler="fast", steps=int(k or 50), bn_mode="official")


def generate_batch(model, poses: torch.Tensor, audio: torch.Tensor, settings: GenerationSettings,
                   seed: int) -> np.ndarray:
    """Sample one evaluation batch seeded with the first n_pre ground-truth frames."""
    cfg = model.cfg
    pre = poses.new_zeros(len(poses), cfg.n_poses, cfg.pose_dim + 1)
    pre[:, :cfg.n_pre_poses, :-1] = poses[:, :cfg.n_pre_poses]
    pre[:, :cfg.n_pre_poses, -1] = 1
    gen = torch.Generator().manual_seed(seed)
    gen_dev = gen if audio.device.type == "cpu" else torch.Generator(audio.device).manual_seed(seed)
    return sample_window(model, audio, pre, settings, gen, gen_dev).float().cpu().numpy()


def score(gen: list[np.ndarray], real: list[np.ndarray], audio: list[np.ndarray], extractor, skel) -> dict:
    """FGD, BC, Diversity and joint MAE of generated batches against the real ones."""
    gen_feat = [extractor.features(torch.from_numpy(g)) for g in gen]
    real_feat = np.vstack([extractor.features(torch.from_numpy(r)) for r in real])
    bc = BeatConsistency(skel)
    for g, a in zip(gen, audio):
        bc.update(g, a)
    return {"fgd": fgd(real_feat, np.vstack(gen_feat)), "bc": bc.value, "diversity": diversity(gen_feat),
            "joint_mae": float(np.mean([joint_mae(g, r, skel) for g, r in zip(gen, real)])),
            "bc_clips_without_onsets": bc.skipped_no_onsets}


def evaluate(checkpoint: str, data: str, samplers: list[str], extractor_path: str | None = None,
             baselines: bool = False, batch_size: int = 128, max_batches: int = 0, device: str = "auto",
             seed: int = 0, motion_clips: int = 4) -> dict:
    """Metrics per sampler (and baseline) on the dataset's windows, as a dict of rows; with motion_clips, also
    the speech/silence arm-speed ratio on that many whole clips."""
    ckpt = load_checkpoint(checkpoint)
    dev, _ = resolve_device(device)
    model = ckpt.model.to(dev)
    ds = WindowDataset(data, motion_filters=False, min_words=0)
    if ds.skeleton.pose_dim != model.cfg.pose_dim:
        raise ValueError(f"{data} holds {ds.skeleton.name} data, the checkpoint is for {ckpt.skeleton.name}")
    batch_size = min(batch_size, len(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=True)
    batches = [b for i, b in zip(range(max_batches or len(loader)), loader)]
    extractor = load_extractor(extractor_path) if extractor_path else train_extractor(ds, ds.skeleton, steps=1500)
    real = [p.numpy() for p, _ in batches]
    audio = [a.numpy() for _, a in batches]
    rows: dict[str, dict] = {}
    runs = [(label, s, False) for label, s in map(parse_sampler, samplers)]
    if baselines:
        runs.append((f"shuffled audio ({runs[0][0]})", runs[0][1], True))
    for label, settings, shuffle in runs:
        t0 = time.perf_counter()
        gen = []
        for i, (p, a) in enumerate(batches):
            if shuffle:  # a derangement: every clip gets another clip's audio
                a = a.roll(1, dims=0)
            gen.append(generate_batch(model, p.to(dev), a.to(dev), settings, seed + i))
        rows[label] = {**score(gen, real, audio, extractor, ds.skeleton),
                       "seconds_per_window": (time.perf_counter() - t0) / (len(batches) * batch_size)}
        if motion_clips:
            rows[label]["speech_silence"] = speech_silence_ratio(model, ds, settings, motion_clips, shuffle)
    if baselines:
        rows["mean pose"] = {**score([np.zeros_like(r) for r in real], real, audio, extractor, ds.skeleton),
                             "seconds_per_window": 0.0}
    rows["real (reference)"] = {**score(real, real, audio, extractor, ds.skeleton), "seconds_per_window": 0.0}
    if motion_clips:
        rows["real (reference)"]["speech_silence"] = speech_silence_ratio(None, ds, None, motion_clips)
    return {"checkpoint": checkpoint, "checkpoint_sha256": ckpt.sha256, "data": data, "data_sha256": ds.sha256,
            "windows": len(batches) * batch_size, "extractor": extractor_path or "trained on the evaluation data",
            "rows": rows}


def speech_silence_speeds(poses: np.ndarray, audio: np.ndarray, skel) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame arm speed (summed |change| of the arm bones' normalised directions) in voiced and silent frames.

    Voiced frames: 15 fps RMS above 8% of the clip's 95th percentile, widened by 2 frames (as the procedural data)."""
    arms = [3 * b + k for b, name in enumerate(skel.bones) if "arm" in name for k in range(3)]
    speed = np.r_[np.abs(np.diff(poses[:, arms], axis=0)).sum(axis=1), 0.0]
    voiced = np.convolve(loudness(audio, len(poses)) > 0.08, np.ones(5), "same") > 0
    return speed[voiced], speed[~voiced]


def speech_silence_ratio(model, ds: WindowDataset, settings: GenerationSettings | None, n_clips: int,
                         shuffle: bool = False) -> float:
    """Arm speed in voiced over silent frames of whole held-out clips: how much the motion follows the speech.

    settings None scores the true motion; otherwise each clip is generated with the long-audio pipeline (WavEncoder
    in eval mode, as the product runs), from its own audio or, with shuffle, from the next clip's audio (scored
    against its own, so a model that ignores the audio lands near the shuffled value)."""
    clips = ds.index["clips"][:n_clips]
    audio = [np.asarray(ds.audio[c["sample_offset"]: c["sample_offset"] + c["n_samples"]], np.float32) / 32767
             for c in clips]
    speech, silence = [], []
    for i, c in enumerate(clips):
        if settings is None:
            poses = np.asarray(ds.poses[c["frame_offset"]: c["frame_offset"] + c["n_frames"]])
        else:
            source = audio[(i + 1) % len(clips)] if shuffle else audio[i]
            poses = generate(model, source, replace(settings, bn_mode="eval", trim=True))[0]
        sp, si = speech_silence_speeds(poses[:c["n_frames"]], audio[i], ds.skeleton)
        speech.append(sp)
        silence.append(si)
    return float(np.concatenate(speech).mean() / max(np.concatenate(silence).mean(), 1e-9))


def markdown_table(result: dict) -> str:
    """The rows as a markdown table."""
    def f(v: float, nd: int) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"
    lines = ["| method | FGD | BC | Diversity | joint MAE | speech/silence | s / window |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {f(r['fgd'], 3)} | {f(r['bc'], 3)} | {f(r['diversity'], 3)} | "
                     f"{f(r['joint_mae'], 4)} | {f(r.get('speech_silence'), 2)} | {f(r['seconds_per_window'], 3)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate a DiffGesture checkpoint with the paper's metrics.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a converted dataset folder (held-out clips)")
    p.add_argument("--samplers", default="paper", help="comma list: paper, fast:K")
    p.add_argument("--extractor", default=None, help="official or trained FGD extractor (default: train one)")
    p.add_argument("--baselines", action="store_true", help="add shuffled-audio and mean-pose baselines")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion-clips", type=int, default=4,
                   help="whole clips for the speech/silence arm-speed ratio (0: skip)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    result = evaluate(a.checkpoint, a.data, a.samplers.split(","), a.extractor, a.baselines, a.batch_size,
                      a.max_batches, a.device, a.seed, a.motion_clips)
    print(markdown_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
