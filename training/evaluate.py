"""Evaluate a checkpoint on held-out windows with the paper's metrics, for several samplers and two baselines.

    python -m training.evaluate --checkpoint X --data Y [--samplers paper,fast:10,fast:25,fast:50]
                                [--extractor FILE] [--baselines] [--json out.json]

As the official evaluation: seeds are the first 4 ground-truth frames, all 34 generated frames are scored, the
WavEncoder normalises with batch statistics (bn_mode "official"), batches of 128 without shuffling (drop_last).
Baselines: "shuffled audio" (the same model and first sampler, audio permuted across the clips of each batch)
and "mean pose" (every frame the dataset mean). Without --extractor, one is trained on the evaluation data.

The gesture measure (gesture_measure) asks whether the motion reads as gesture, on whole clips generated as the
product runs: forearms still in pauses, spread over the gesture space in speech, faster in speech than in pauses,
no tremor at rest (GESTURE_TARGETS), and smooth strokes rather than a wiggle (hf_share: the share of the forearm
motion's power above 4 Hz, which needs no pauses; human within HF_FACTOR of MOCAP_HF_SHARE), for both arms pooled
and each arm alone, with a verdict that says which targets the speech let it measure. Two more uses:
    python -m training.evaluate --data Y                            # the data's own motion
    python -m training.evaluate --checkpoint X --speech a.wav [--variations 4] [--samplers fast:25]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
import torch

from model_core.checkpoint import load_checkpoint
from model_core.timing import FPS
from model_core.pipeline import generate, resolve_device, sample_window
from model_core.progress import ProgressPrinter, window_progress
from model_core.settings import GenerationSettings, preset
from model_core.skeleton import to_directions

from .data import WindowDataset
from .metrics import (HF_CUTOFF, BeatConsistency, diversity, fgd, forearm_velocity_power, joint_mae,
                      load_extractor, train_extractor)
from .procedural import voiced_frames


SAMPLER_SPECS = {"fast": {}, "ddim0": {"solver": "ddim", "eta": 0.0}, "dpm": {"solver": "dpm"}}


def parse_sampler(spec: str) -> tuple[str, GenerationSettings]:
    """'paper' or NAME:K -> (label, settings with the official batch-statistics BatchNorm). NAME: fast (the default
    fast sampler with K steps), ddim0 (deterministic DDIM), dpm (DPM-Solver++(2M))."""
    if spec == "paper":
        return spec, preset("paper")
    name, _, k = spec.partition(":")
    if name not in SAMPLER_SPECS:
        raise ValueError(f"unknown sampler {spec!r}: use paper or {', '.join(SAMPLER_SPECS)} with :K")
    return spec, GenerationSettings(sampler="fast", steps=int(k or 50), bn_mode="official", **SAMPLER_SPECS[name])


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
             seed: int = 0, motion_clips: int = 4, motion_only: bool = False, quiet: bool = False) -> dict:
    """Metrics per sampler (and baseline) on the dataset's windows, as a dict of rows; with motion_clips, also
    the speech/silence arm-speed ratio and the gesture measure on that many whole clips (motion_only: just those)."""
    ckpt = load_checkpoint(checkpoint)
    dev, _ = resolve_device(device)
    model = ckpt.model.to(dev)
    ds = WindowDataset(data, motion_filters=False, min_words=0)
    if ds.skeleton.pose_dim != model.cfg.pose_dim:
        raise ValueError(f"{data} holds {ds.skeleton.name} data, the checkpoint is for {ckpt.skeleton.name}")
    batch_size = min(batch_size, len(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=True)
    batches = [] if motion_only else [b for i, b in zip(range(max_batches or len(loader)), loader)]
    extractor = (None if motion_only else load_extractor(extractor_path) if extractor_path
                 else train_extractor(ds, ds.skeleton, steps=1500))
    def scored(gen: list[np.ndarray]) -> dict:
        return score(gen, real, audio, extractor, ds.skeleton) if batches else {}
    real = [p.numpy() for p, _ in batches]
    audio = [a.numpy() for _, a in batches]
    rows: dict[str, dict] = {}
    runs = [(label, s, False) for label, s in map(parse_sampler, samplers)]
    if baselines:
        runs.append((f"shuffled audio ({runs[0][0]})", runs[0][1], True))
    progress = ProgressPrinter("evaluate", "part", len(runs) * (len(batches) + motion_clips), quiet=quiet)
    for r, (label, settings, shuffle) in enumerate(runs):
        t0 = time.perf_counter()
        gen = []
        for i, (p, a) in enumerate(batches):
            if shuffle:  # a derangement: every clip gets another clip's audio
                a = a.roll(1, dims=0)
            gen.append(generate_batch(model, p.to(dev), a.to(dev), settings, seed + i))
            progress.update(r * (len(batches) + motion_clips) + i + 1, f"{label}: batch {i + 1}/{len(batches)}")
        rows[label] = {**scored(gen), "seconds_per_window":
                       (time.perf_counter() - t0) / (len(batches) * batch_size) if batches else None}
        if motion_clips:
            def clip_done(i: int) -> None:
                progress.update((r + 1) * (len(batches) + motion_clips) - motion_clips + i,
                                f"{label}: whole clip {i}/{motion_clips}")
            rows[label].update(motion_rows(clip_motion(model, ds, settings, motion_clips, shuffle, clip_done),
                                           ds.skeleton))
    progress.close()
    if baselines:
        rows["mean pose"] = {**scored([np.zeros_like(r) for r in real]), "seconds_per_window": 0.0}
    rows["real (reference)"] = {**scored(real), "seconds_per_window": 0.0}
    if motion_clips:
        real_clips = clip_motion(None, ds, None, motion_clips)
        rows["real (reference)"].update(motion_rows(real_clips, ds.skeleton))
        if baselines:
            still = [(np.zeros_like(p), a) for p, a in real_clips]
            rows["mean pose"]["gesture"] = gesture_measure(still, ds.skeleton)
    return {"checkpoint": checkpoint, "checkpoint_sha256": ckpt.sha256, "data": data, "data_sha256": ds.sha256,
            "windows": len(batches) * batch_size,
            "extractor": None if motion_only else extractor_path or "trained on the evaluation data",
            "rows": rows}


def speech_silence_speeds(poses: np.ndarray, audio: np.ndarray, skel) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame arm speed (summed |change| of the arm bones' normalised directions) in voiced and silent frames."""
    arms = [3 * b + k for b, name in enumerate(skel.bones) if "arm" in name for k in range(3)]
    speed = np.r_[np.abs(np.diff(poses[:, arms], axis=0)).sum(axis=1), 0.0]
    voiced = voiced_frames(audio, len(poses))
    return speed[voiced], speed[~voiced]


# ---- the gesture measure (issues 14, 25): does the motion read as gesture? ---------------------------------------

PAUSE_MARGIN = 6  # frames (0.4 s) trimmed from each side of a silence: retraction and preparation are gesture phases
# Targets for data and models: name -> (direction, threshold); units deg/s, deg, ratio, deg/s^2.
GESTURE_TARGETS = {"pause_speed": ("<=", 12.0), "speech_spread": (">=", 18.0), "speech_pause_ratio": (">=", 2.5),
                   "rest_jitter": ("<=", 120.0)}
PAUSE_TARGETS = ("pause_speed", "speech_pause_ratio", "rest_jitter")  # measurable only where the speech pauses
STILL_SPEED = 1.0  # deg/s: pause speeds below this count as still in the ratio (it would divide by ~0 otherwise)
ARMS = ("left", "right")
# Smoothness without pauses: the share of forearm motion power above metrics.HF_CUTOFF in motion capture of people
# talking; the target is within HF_FACTOR of it. Measured by `python -m training.mocap` on six CMU takes of subject
# 138, "Story" (a person standing, telling a story with hand gestures; MODEL_CARD.md), pooled over both arms.
MOCAP_HF_SHARE: float | None = 0.0111
HF_FACTOR = 1.5


def pause_frames(voiced: np.ndarray, margin: int = PAUSE_MARGIN) -> np.ndarray:
    """Silent frames at least `margin` frames away from voiced ones: where an animator expects a still rest."""
    near = np.convolve(voiced.astype(np.int8), np.ones(2 * margin + 1, np.int8), "same") > 0
    return ~near


def forearm_directions(poses: np.ndarray, skel) -> np.ndarray:
    """Unit directions (frames, 2, 3) of the left and right forearms."""
    dirs = to_directions(poses, skel)
    return dirs[:, [skel.bone_index(f"{arm}_forearm") for arm in ARMS]].astype(np.float64)


def gesture_stats(poses: np.ndarray, audio: np.ndarray, skel, margin: int = PAUSE_MARGIN) -> dict[str, np.ndarray]:
    """Per-arm sums (arrays over ARMS) and frame counts of one clip for gesture_measure (degrees, and the forearm
    velocity power above metrics.HF_CUTOFF and in all, weighted by the clip's frames)."""
    d = forearm_directions(poses, skel)
    n = len(d)
    voiced = voiced_frames(audio, n)
    pause = pause_frames(voiced, margin)
    speed = np.degrees(np.arccos(np.clip((d[1:] * d[:-1]).sum(-1), -1, 1))) * FPS  # (n-1, arms)
    accel = np.degrees(np.linalg.norm(d[2:] - 2 * d[1:-1] + d[:-2], axis=-1)) * FPS ** 2  # (n-2, arms)
    in_pause2 = pause[1:] & pause[:-1]
    in_pause3 = pause[2:] & pause[1:-1] & pause[:-2]
    in_speech2 = voiced[1:] & voiced[:-1]
    spread = np.zeros(len(ARMS))
    if voiced.sum() > 1:
        sd = d[voiced]
        mean = sd.mean(0)
        mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-9)
        ang = np.degrees(np.arccos(np.clip((sd * mean).sum(-1), -1, 1)))
        spread = np.sqrt((ang ** 2).mean(0))
    spectrum = forearm_velocity_power(d)
    high, power = np.zeros(len(ARMS)), np.zeros(len(ARMS))
    if spectrum is not None:
        psd, freqs = spectrum
        high, power = psd[:, freqs > HF_CUTOFF].sum(-1) * (n - 1), psd.sum(-1) * (n - 1)
    return {"pause_speed": speed[in_pause2].sum(0), "pause_speed_n": int(in_pause2.sum()),
            "speech_speed": speed[in_speech2].sum(0), "speech_speed_n": int(in_speech2.sum()),
            "jitter": accel[in_pause3].sum(0), "jitter_n": int(in_pause3.sum()),
            "spread": spread * int(voiced.sum()), "spread_n": int(voiced.sum()), "hf_power": high, "power": power}


def _measure(tot: dict, arm: int | slice) -> dict[str, float]:
    """The measure of one arm (an index) or of both (slice(None): each arm's means averaged) from pooled sums."""
    def mean(key: str) -> float:
        return float(np.mean(tot[key][arm]) / tot[f"{key}_n"]) if tot.get(f"{key}_n") else float("nan")
    pause, speech = mean("pause_speed"), mean("speech_speed")
    power = float(np.sum(tot["power"][arm])) if tot else 0.0
    return {"pause_speed": pause, "speech_spread": mean("spread"),
            "speech_pause_ratio": speech / max(pause, STILL_SPEED), "rest_jitter": mean("jitter"),
            "hf_share": float(np.sum(tot["hf_power"][arm])) / power if power > 1e-12 else float("nan"),
            "speech_speed": speech}


def gesture_measure(clips: Iterable[tuple[np.ndarray, np.ndarray]], skel, margin: int = PAUSE_MARGIN
                    ) -> dict:
    """Pooled over clips of (normalised poses at 15 fps, 16 kHz audio), both forearms averaged and per arm ("arms"):
    forearm speed in pauses (deg/s), forearm direction spread in speech (RMS angle to the clip's mean speech
    direction, deg), speech/pause forearm speed ratio, rest jitter (mean forearm angular acceleration in pauses,
    deg/s^2), and hf_share: the share of the forearm velocity's power above metrics.HF_CUTOFF (needs no pauses).
    NaN where a clip set has no pauses."""
    tot: dict = {}
    for poses, audio in clips:
        for k, v in gesture_stats(poses, audio, skel, margin).items():
            tot[k] = tot.get(k, 0) + v
    return {**_measure(tot, slice(None)), "pause_frames": int(tot.get("pause_speed_n", 0)),
            "arms": {name: _measure(tot, i) for i, name in enumerate(ARMS)}}


def meets_targets(measure: dict[str, float]) -> dict[str, bool]:
    """Which of GESTURE_TARGETS a gesture_measure result (or one arm's) meets; NaN meets none."""
    return {k: bool(measure[k] <= t if op == "<=" else measure[k] >= t) for k, (op, t) in GESTURE_TARGETS.items()}


def hf_target() -> tuple[float, float] | None:
    """The hf_share range that counts as human (within HF_FACTOR of MOCAP_HF_SHARE); None while uncalibrated."""
    return None if MOCAP_HF_SHARE is None else (MOCAP_HF_SHARE / HF_FACTOR, MOCAP_HF_SHARE * HF_FACTOR)


def verdict(measure: dict) -> dict:
    """Pass or fail per target for both arms and each arm, None where it cannot be measured: the pause targets in
    speech without pauses (pause_frames 0), hf_share while MOCAP_HF_SHARE is unknown. "passed": every measurable
    target met by both arms pooled and by each arm alone (both arms take part)."""
    hf = hf_target()
    def one(m: dict) -> dict[str, bool | None]:
        out: dict[str, bool | None] = dict(meets_targets(m))
        if not measure["pause_frames"]:
            out.update(dict.fromkeys(PAUSE_TARGETS))
        out["hf_share"] = None if hf is None else bool(hf[0] <= m["hf_share"] <= hf[1])
        return out
    rows = {"both": one(measure), **{arm: one(m) for arm, m in measure["arms"].items()}}
    return {"targets": rows, "passed": all(v is not False for r in rows.values() for v in r.values()),
            "not_measured": sorted({k for r in rows.values() for k, v in r.items() if v is None})}


def clip_motion(model, ds: WindowDataset, settings: GenerationSettings | None, n_clips: int,
                shuffle: bool = False, done: Callable[[int], None] | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(poses, own audio) of whole held-out clips: the true motion (settings None) or generated ones.

    Generated clips use the long-audio pipeline (WavEncoder in eval mode, as the product runs) on their own audio
    or, with shuffle, on the next clip's audio; they are scored against their own, so a model that ignores the
    audio lands near the shuffled value. done(i) is told when the i-th clip is ready."""
    clips = ds.index["clips"][:n_clips]
    audio = [np.asarray(ds.audio[c["sample_offset"]: c["sample_offset"] + c["n_samples"]], np.float32) / 32767
             for c in clips]
    out = []
    for i, c in enumerate(clips):
        if settings is None:
            poses = np.asarray(ds.poses[c["frame_offset"]: c["frame_offset"] + c["n_frames"]])
        else:
            source = audio[(i + 1) % len(clips)] if shuffle else audio[i]
            poses = generate(model, source, replace(settings, bn_mode="eval", trim=True))[0]
        out.append((poses[:c["n_frames"]], audio[i]))
        if done is not None:
            done(i + 1)
    return out


def motion_rows(clips: list[tuple[np.ndarray, np.ndarray]], skel) -> dict:
    """speech_silence and the gesture measure of whole clips, as evaluate's row entries."""
    speeds = [speech_silence_speeds(p, a, skel) for p, a in clips]
    speech = np.concatenate([s for s, _ in speeds])
    silence = np.concatenate([s for _, s in speeds])
    return {"speech_silence": float(speech.mean() / max(silence.mean(), 1e-9)),
            "gesture": gesture_measure(clips, skel)}


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (the gesture measure's columns where the rows have it)."""
    def f(v: float, nd: int) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"
    lines = ["| method | FGD | BC | Diversity | joint MAE | speech/silence | " + GESTURE_HEADER + " s / window |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {f(r.get('fgd'), 3)} | {f(r.get('bc'), 3)} | {f(r.get('diversity'), 3)} | "
                     f"{f(r.get('joint_mae'), 4)} | {f(r.get('speech_silence'), 2)} | "
                     f"{gesture_cells(r.get('gesture'))} {f(r['seconds_per_window'], 3)} |")
    return "\n".join(lines)


GESTURE_HEADER = ("pause °/s (≤ 12) | spread ° (≥ 18) | speech/pause (≥ 2.5) | jitter °/s² (≤ 120) | "
                  "power > 4 Hz (mocap ×/÷ 1.5) |")
GESTURE_COLUMNS = (("pause_speed", 1), ("speech_spread", 1), ("speech_pause_ratio", 2), ("rest_jitter", 0),
                   ("hf_share", 3))


def gesture_cells(m: dict | None) -> str:
    """The gesture measure as five table cells, both arms and then each arm (L, R); a target missed marked '✗'."""
    if not m:
        return "n/a | " * len(GESTURE_COLUMNS)
    rows = verdict(m)["targets"]
    def cell(v: dict, ok: dict, k: str, nd: int) -> str:
        return "n/a" if math.isnan(v[k]) else f"{v[k]:.{nd}f}{' ✗' if ok[k] is False else ''}"
    return " ".join(f"{cell(m, rows['both'], k, nd)} (L {cell(m['arms']['left'], rows['left'], k, nd)}, "
                    f"R {cell(m['arms']['right'], rows['right'], k, nd)}) |" for k, nd in GESTURE_COLUMNS)


def verdict_line(measure: dict) -> str:
    """One line saying whether the motion meets the targets it can be measured on, and which it could not."""
    v = verdict(measure)
    missed = [f"{k} ({', '.join(arm for arm, r in v['targets'].items() if r[k] is False)})"
              for k in v["targets"]["both"] if any(r[k] is False for r in v["targets"].values())]
    why = {k: "no pauses of 1.2 s or more" if k in PAUSE_TARGETS else "no motion capture value (MOCAP_HF_SHARE)"
           for k in v["not_measured"]}
    return (f"verdict: {'meets' if v['passed'] else 'misses'} the targets"
            + (f"; missed: {', '.join(missed)}" if missed else "")
            + (f"; not measured: {', '.join(f'{k} ({w})' for k, w in why.items())}" if why else ""))


def measure_speech(checkpoint: str, speech: str, settings: GenerationSettings, quiet: bool = False
                   ) -> dict[str, float]:
    """The gesture measure of a checkpoint's motion for one speech file, pooled over settings.variations."""
    from model_core.audio import load_audio
    ckpt = load_checkpoint(checkpoint)
    audio = load_audio(speech)
    progress, show = window_progress("evaluate", quiet)
    poses = generate(ckpt.model, audio, settings, progress=show)
    progress.close()
    return gesture_measure([(p, audio) for p in poses], ckpt.skeleton)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate a DiffGesture checkpoint with the paper's metrics and the "
                                "gesture measure; without --checkpoint, measure the data's own motion.")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", default=None, help="a converted dataset folder (held-out clips)")
    p.add_argument("--speech", default=None, help="with --checkpoint: only the gesture measure on this speech file")
    p.add_argument("--variations", type=int, default=4, help="variations generated for --speech")
    p.add_argument("--samplers", default=None,
                   help="comma list: paper, fast:K, ddim0:K, dpm:K (default paper; --speech: the first one, "
                        "default the product's)")
    p.add_argument("--extractor", default=None, help="official or trained FGD extractor (default: train one)")
    p.add_argument("--baselines", action="store_true", help="add shuffled-audio and mean-pose baselines")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion-clips", type=int, default=4,
                   help="whole clips for speech/silence and the gesture measure (0: skip)")
    p.add_argument("--motion-only", action="store_true",
                   help="only speech/silence and the gesture measure on whole clips (no FGD, BC, Diversity)")
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = p.parse_args(argv)
    if a.speech:
        if not a.checkpoint:
            p.error("--speech needs --checkpoint")
        settings = parse_sampler(a.samplers.split(",")[0])[1] if a.samplers else GenerationSettings()
        settings = replace(settings, bn_mode="eval", trim=True, variations=a.variations, seed=a.seed)
        result = {"checkpoint": a.checkpoint, "speech": a.speech, "settings": settings.to_dict(),
                  "gesture": measure_speech(a.checkpoint, a.speech, settings, a.quiet)}
        print(f"| {GESTURE_HEADER}\n| {gesture_cells(result['gesture'])}\n{verdict_line(result['gesture'])}")
    elif not a.data:
        p.error("give --data (and --checkpoint to evaluate a model)")
    elif not a.checkpoint:
        ds = WindowDataset(a.data, motion_filters=False, min_words=0)
        result = {"data": a.data, "data_sha256": ds.sha256, "clips": a.motion_clips,
                  "gesture": gesture_measure(clip_motion(None, ds, None, a.motion_clips), ds.skeleton)}
        print(f"| {GESTURE_HEADER}\n| {gesture_cells(result['gesture'])}\n{verdict_line(result['gesture'])}")
    else:
        result = evaluate(a.checkpoint, a.data, (a.samplers or "paper").split(","), a.extractor, a.baselines,
                          a.batch_size, a.max_batches, a.device, a.seed, a.motion_clips, a.motion_only, a.quiet)
        print(markdown_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
