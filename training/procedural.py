"""A procedural co-speech dataset: real synthetic speech (espeak-ng) with rule-driven motion. NOT human motion.

It exists so that tests, CI and the bundled demo checkpoint have real audio-driven data without downloads. The
audio is espeak-ng speech (varied voices, rates, pitches, silent pauses between sentences); the motion is made by
hand-written rules from that audio: arms rise into gesture space during speech and return to rest in long
silences (short pauses hold the pose), beat strokes fall on audio onsets scaled by loudness, phrases are two- or
one-handed, the head nods on the strongest onsets, fingers (Expressive) open while gesturing and curl at rest.
Poses are built as rotations of the skeleton's mean pose in the canonical character frame and converted with
model_core.skeleton.canonical_to_poses, so they are normalised direction vectors in the dataset frame.
Everything is deterministic given the seed (espeak-ng and librosa are deterministic).
"""
from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from model_core.audio import load_audio
from model_core.network import FPS, SAMPLE_RATE
from model_core.skeleton import Skeleton, canonical_to_poses, dataset_to_canonical, get_skeleton

from .data import Clip, write_dataset

VOICES = ("en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("", "+m3", "+f2", "+f4", "+m7")
WORDS = ("we", "think", "about", "the", "future", "every", "single", "day", "and", "it", "really", "matters",
         "because", "people", "change", "their", "world", "when", "they", "believe", "this", "idea", "is",
         "simple", "but", "powerful", "so", "let", "me", "show", "you", "what", "happened", "next", "one",
         "important", "question", "remains", "how", "do", "learn", "together", "never", "again", "ever",
         "science", "music", "energy", "water", "cities", "children", "story", "moment", "truly", "amazing")
HOP = SAMPLE_RATE / FPS


def speak(text: str, voice: str, rate: int, pitch: int, tmp: Path) -> np.ndarray:
    """One utterance from espeak-ng as 16 kHz float32 (resampled by model_core.audio.load_audio)."""
    wav = tmp / "utt.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-v", voice, "-s", str(rate), "-p", str(pitch), text],
                   check=True, capture_output=True)
    return load_audio(wav)


def make_speech(rng: np.random.Generator, duration: float, tmp: Path) -> tuple[np.ndarray, list]:
    """Sentences separated by silences (0.2-2.5 s) until `duration` seconds; returns audio and word timings."""
    voice = VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))]
    rate, pitch = int(rng.integers(120, 200)), int(rng.integers(25, 80))
    parts = [np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)]
    words, t = [], len(parts[0]) / SAMPLE_RATE
    while t < duration:
        sentence = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(3, 14)))]
        if len(sentence) > 6 and rng.random() < 0.4:
            sentence[len(sentence) // 2] += ","
        utt = speak(" ".join(sentence) + ".", voice, rate, pitch, tmp) * rng.uniform(0.4, 1.0)
        dur = len(utt) / SAMPLE_RATE
        words += [(w.strip(","), t + dur * i / len(sentence), t + dur * (i + 1) / len(sentence))
                  for i, w in enumerate(sentence)]
        gap = np.zeros(int(rng.choice([rng.uniform(0.2, 0.6), rng.uniform(0.8, 2.5)]) * SAMPLE_RATE), np.float32)
        parts += [utt, gap]
        t += dur + len(gap) / SAMPLE_RATE
    return np.concatenate(parts), words


def loudness(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS per 15 fps frame, scaled to 0..1 by the clip's 95th percentile."""
    rms = np.array([np.sqrt(np.mean(audio[int(i * HOP): int((i + 1) * HOP)] ** 2) + 1e-12) for i in range(n_frames)])
    return np.clip(rms / max(np.percentile(rms, 95), 1e-6), 0, 1)


def _smooth(x: np.ndarray, tau: float) -> np.ndarray:
    """Critically damped second-order low-pass (two EMA passes), time constant tau seconds."""
    a = 1 - np.exp(-1 / (FPS * tau))
    for _ in range(2):
        y = np.empty_like(x)
        acc = x[0]
        for i, v in enumerate(x):
            acc += a * (v - acc)
            y[i] = acc
        x = y
    return x


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame runs where mask is True."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2], edges[1::2]))


def _rot(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation matrices (T, 3, 3) about a fixed or per-frame unit axis."""
    axis = np.broadcast_to(np.asarray(axis, np.float64), (len(angle), 3))
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    k = np.zeros((len(angle), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


X, Y, Z = np.eye(3)


def motion_controls(audio: np.ndarray, n_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame gesture controls (radians / 0..1) derived from the speech: activation, strokes, nods, curls."""
    import librosa
    loud = loudness(audio, n_frames)
    speaking = np.convolve(loud > 0.08, np.ones(5), "same") > 0  # +-2 frames around voiced audio
    phrases = _runs(speaking)
    merged: list[list[int]] = []
    for s, e in phrases:  # pauses under 0.5 s are holds: the phrase continues
        if merged and s - merged[-1][1] < 0.5 * FPS:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    t = np.arange(n_frames) / FPS
    act = {"left": np.zeros(n_frames), "right": np.zeros(n_frames)}
    for s, e in merged:
        mode = rng.choice(["both", "left", "right"], p=[0.5, 0.25, 0.25])
        level = rng.uniform(0.7, 1.0) * (0.6 + 0.4 * loud[s:e].mean() / max(loud[s:e].max(), 1e-6))
        for side in act:
            act[side][s:e] = level if mode in ("both", side) else 0.15 * level
    act = {k: np.clip(_smooth(v, 0.12), 0, 1) for k, v in act.items()}
    onset_env = librosa.onset.onset_strength(y=audio, sr=SAMPLE_RATE)
    onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=SAMPLE_RATE, units="time")
    stroke, nod = np.zeros(n_frames), np.zeros(n_frames)
    strong = np.percentile(loud[speaking], 70) if speaking.any() else 1.0
    for o in onsets:
        i = min(int(o * FPS), n_frames - 1)
        amp = loud[i: i + 3].max()
        stroke += amp * np.exp(-0.5 * ((t - o - 0.1) / 0.07) ** 2)
        if amp >= strong:
            nod += amp * np.exp(-0.5 * ((t - o - 0.12) / 0.1) ** 2)
    phase = rng.uniform(0, 2 * np.pi, 3)
    speech = np.maximum(act["left"], act["right"])
    return {**{f"act_{k}": v for k, v in act.items()}, "stroke": np.clip(stroke, 0, 1.2), "nod": np.clip(nod, 0, 1),
            "sway": speech * np.sin(2 * np.pi * 0.4 * t + phase[0]),
            "yaw": speech * np.sin(2 * np.pi * 0.25 * t + phase[1]),
            "breath": np.sin(2 * np.pi * 0.25 * t + phase[2]), "speech": speech}


def _parent_bones(skel: Skeleton) -> list[int | None]:
    child_of = {c: b for b, (_, c) in enumerate(skel.pairs)}
    return [child_of.get(p) for p, _ in skel.pairs]


def pose_from_controls(ctrl: dict[str, np.ndarray], skel: Skeleton) -> np.ndarray:
    """Canonical-frame bone directions (T, n_bones, 3): local rotations of the mean pose, chained parent first."""
    n = len(ctrl["speech"])
    rest = dataset_to_canonical(skel.mean.astype(np.float64), skel)
    rest /= np.linalg.norm(rest, axis=-1, keepdims=True)
    local = {b: np.broadcast_to(np.eye(3), (n, 3, 3)) for b in skel.bones}
    local["spine"] = _rot(X, 0.06 * ctrl["speech"] + 0.01 * ctrl["breath"]) @ _rot(Y, 0.04 * ctrl["sway"])
    local["neck_nose"] = _rot(Z, 0.2 * ctrl["yaw"]) @ _rot(X, 0.3 * ctrl["nod"] - 0.05 * ctrl["speech"])
    for side, sign in (("left", 1.0), ("right", -1.0)):
        a, beat = ctrl[f"act_{side}"], ctrl["stroke"] * (0.25 + 0.75 * ctrl[f"act_{side}"])
        # shoulder: forward raise and abduction; elbow: from hanging (+0.5 rad down) to raised forearm
        local[f"{side}_upper_arm"] = (_rot(Y, -sign * (0.35 * a + 0.05 * ctrl["sway"]))
                                      @ _rot(X, -0.55 * a + 0.15 * beat + 0.02 * ctrl["breath"]))
        local[f"{side}_forearm"] = _rot(X, 0.5 - 1.1 * a + 0.45 * beat)
        if f"{side}_index1" in skel.bones:
            _curl_fingers(local, rest, skel, side, 0.9 - 0.8 * a + 0.3 * beat)
    parents = _parent_bones(skel)
    glob: list[np.ndarray] = []
    for b, name in enumerate(skel.bones):
        glob.append(local[name] if parents[b] is None else glob[parents[b]] @ local[name])
    return np.stack([g @ r for g, r in zip(glob, rest)], axis=1)


def _curl_fingers(local: dict, rest: np.ndarray, skel: Skeleton, side: str, curl: np.ndarray) -> None:
    """Curl each finger's two distal bones toward the palm by `curl` radians per joint."""
    w = {f: rest[skel.bone_index(f"{side}_{f}_base")] for f in ("pinky", "thumb")}
    palm = np.cross(w["pinky"], w["thumb"]) * (1 if side == "left" else -1)
    for f in ("index", "middle", "pinky", "ring", "thumb"):
        axis = np.cross(rest[skel.bone_index(f"{side}_{f}_base")], palm)
        scale = 0.5 if f == "thumb" else 1.0
        for seg in ("1", "2"):
            local[f"{side}_{f}{seg}"] = _rot(axis, scale * curl)


def make_clip(skel: Skeleton, seed: int, index: int, duration: float, tmp: Path) -> Clip:
    """One procedural clip of about `duration` seconds; deterministic given (seed, index)."""
    rng = np.random.default_rng([seed, index])
    audio, words = make_speech(rng, duration, tmp)
    n_frames = int(len(audio) / HOP)
    ctrl = motion_controls(audio, n_frames, rng)
    poses = canonical_to_poses(pose_from_controls(ctrl, skel).astype(np.float32), skel)
    return Clip(f"procedural_{seed}_{index:05d}", poses, audio, words, {"kind": "procedural"})


def _clip_job(args: tuple[str, int, int, float]) -> Clip:
    """make_clip in a worker process, with a scratch folder of its own."""
    skeleton, seed, index, duration = args
    with tempfile.TemporaryDirectory() as tmp:
        return make_clip(get_skeleton(skeleton), seed, index, duration, Path(tmp))


def build(out: str | Path, skeleton: str, n_clips: int, seed: int = 0, duration: float = 20.0, jobs: int = 1) -> dict:
    """Write n_clips procedural clips for `skeleton` to `out` in the project's clip format.

    jobs > 1 makes clips in that many processes; the result is the same, clip for clip, as with one."""
    skel = get_skeleton(skeleton)
    source = {"kind": "procedural", "seed": seed, "n_clips": n_clips, "duration": duration,
              "note": "synthetic speech, rule-based motion; not human motion"}
    work = [(skeleton, seed, i, duration) for i in range(n_clips)]
    if jobs <= 1:
        return write_dataset(out, map(_clip_job, work), skel, source)
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return write_dataset(out, pool.imap(_clip_job, work, chunksize=2), skel, source)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a procedural co-speech dataset (not human motion).")
    p.add_argument("out")
    p.add_argument("--skeleton", default="ted_gesture", choices=["ted_gesture", "ted_expressive"])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=20.0, help="approximate seconds per clip")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (the data does not depend on it)")
    a = p.parse_args(argv)
    index = build(a.out, a.skeleton, a.clips, a.seed, a.duration, a.jobs)
    print(f"{len(index['clips'])} clips, {index['n_frames']} frames ({index['n_frames'] / FPS / 60:.1f} min), "
          f"sha256 {index['sha256'][:12]}")


if __name__ == "__main__":
    main()
