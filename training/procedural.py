"""A procedural co-speech dataset: real synthetic speech (espeak-ng, flite, festival) with rule-driven gesture. NOT
human motion.

It exists so that tests, CI and the bundled demo checkpoint have real audio-driven data without downloads. The
audio is speech from three offline synthesizers (varied voices, rates, pitches and loudness, silent pauses between
sentences); the voices in HELD_OUT_VOICES never go into training data (--voices held-out makes evaluation clips
from them). The motion follows
what the gesture literature describes (McNeill, "Hand and Mind", 1992; Kendon, "Gesture", 2004, ch. 7):
  - gesture units span speech phrases; they end, and the hands retract to a still rest pose, in pauses longer
    than about 0.5 s (REST_PAUSE); shorter pauses keep the unit going;
  - each speech phrase gets a gesture phrase: preparation, a stroke whose end falls on the phrase's most accented
    onset (loudness and pitch), a post-stroke hold; long phrases get further strokes on later accents;
  - beats: small down-up flicks on other onsets inside phrases, during holds;
  - one- or two-handed, symmetric or asymmetric, in McNeill's gesture space in front of the torso (centre-centre,
    centre, periphery; abdomen, chest and face height), farther and higher on stronger accents;
  - head nods and a slight torso lean on strong accents, the head turned a little towards the gesturing hand;
  - rest is exactly still: no noise, sway or breathing on any bone while the hands rest.
Hand paths are minimum-jerk moves between key positions in the torso's frame, solved to arm directions with
two-bone IK, in the canonical character frame, and converted with model_core.skeleton.canonical_to_poses.
Everything is deterministic given the seed (the synthesizers, sox without dither and librosa are deterministic).
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, fftconvolve, sosfilt

from model_core.audio import load_audio
from model_core.timing import FPS, SAMPLE_RATE
from model_core.skeleton import Skeleton, canonical_to_poses, dataset_to_canonical, get_skeleton, to_joints

from .data import Clip, write_dataset

ESPEAK_VOICES = tuple(f"espeak-ng:{v}{variant}" for v in ("en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp",
                                                               "en-029", "en-gb-x-gbclan")
                      for variant in ("", "+m3", "+f2", "+f4", "+m7"))
FLITE_VOICES = tuple(f"flite:{v}" for v in ("kal16", "slt", "rms", "awb"))  # flite's built-in voices
FESTIVAL_VOICES = tuple(f"festival:{v}" for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"))
# Voices kept out of the training data, for evaluation on a voice the model never heard (issue 25): one place.
HELD_OUT_VOICES = ("flite:awb",)
TRAIN_VOICES = tuple(v for v in ESPEAK_VOICES + FLITE_VOICES + FESTIVAL_VOICES if v not in HELD_OUT_VOICES)
VOICE_SETS = {"train": TRAIN_VOICES, "held-out": HELD_OUT_VOICES}
WORDS = ("we", "think", "about", "the", "future", "every", "single", "day", "and", "it", "really", "matters",
         "because", "people", "change", "their", "world", "when", "they", "believe", "this", "idea", "is",
         "simple", "but", "powerful", "so", "let", "me", "show", "you", "what", "happened", "next", "one",
         "important", "question", "remains", "how", "do", "learn", "together", "never", "again", "ever",
         "science", "music", "energy", "water", "cities", "children", "story", "moment", "truly", "amazing")
HOP = SAMPLE_RATE / FPS


def speak(text: str, voice: str, rate: float, pitch: float, tmp: Path) -> np.ndarray:
    """One utterance as 16 kHz float32 from a voice "synthesizer:name" (ESPEAK_VOICES, FLITE_VOICES,
    FESTIVAL_VOICES), `rate` times the voice's own speed and `pitch` semitones off its own pitch: espeak-ng sets both
    itself, flite's and festival's speech is changed by sox (tempo, pitch; no dither, so the same every time)."""
    synth, name = voice.split(":", 1)
    wav, raw = tmp / "utt.wav", tmp / "raw.wav"
    if synth == "espeak-ng":
        cmd = ["espeak-ng", "-w", wav, "-v", name, "-s", round(160 * rate), "-p", round(50 + 8 * pitch), text]
    elif synth == "flite":
        cmd = ["flite", "-voice", name, "-t", text, "-o", raw]
    elif synth == "festival":
        (tmp / "utt.txt").write_text(text)
        cmd = ["text2wave", "-eval", f"(voice_{name})", tmp / "utt.txt", "-o", raw]
    else:
        raise ValueError(f"unknown synthesizer in voice {voice!r}: use espeak-ng, flite or festival")
    if not shutil.which(str(cmd[0])):
        raise RuntimeError(f"{cmd[0]} is not installed (voice {voice}): `python3 build.py setup` installs the "
                           "synthesizers")
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    if synth != "espeak-ng":
        subprocess.run(["sox", "-D", raw, wav, "tempo", "-s", f"{rate:.4f}", "pitch", f"{100 * pitch:.1f}"],
                       check=True, capture_output=True)
    return load_audio(wav)


def pick_voice(rng: np.random.Generator, voices: tuple[str, ...]) -> str:
    """A synthesizer with equal chances among those in `voices`, then one of its voices."""
    synths = sorted({v.split(":", 1)[0] for v in voices})
    synth = synths[rng.integers(len(synths))]
    own = [v for v in voices if v.startswith(f"{synth}:")]
    return own[rng.integers(len(own))]


def make_speech(rng: np.random.Generator, duration: float, tmp: Path, voices: tuple[str, ...] = TRAIN_VOICES
                ) -> tuple[np.ndarray, list, str]:
    """Sentences in one voice, separated by silences (0.2-2.5 s), until `duration` seconds; rate (0.75-1.25x),
    pitch (+-3 semitones) per clip and loudness per sentence varied. Returns audio, word timings and the voice."""
    voice = pick_voice(rng, voices)
    rate, pitch = float(rng.uniform(0.75, 1.25)), float(rng.uniform(-3.0, 3.0))
    parts = [np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)]
    words, t = [], len(parts[0]) / SAMPLE_RATE
    while t < duration:
        sentence = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(3, 14)))]
        if len(sentence) > 6 and rng.random() < 0.4:
            sentence[len(sentence) // 2] += ","
        utt = speak(" ".join(sentence) + ".", voice, rate, pitch, tmp)
        utt = utt / max(float(np.abs(utt).max()), 1e-6) * rng.uniform(0.3, 0.95)  # the same range for every voice
        dur = len(utt) / SAMPLE_RATE
        words += [(w.strip(","), t + dur * i / len(sentence), t + dur * (i + 1) / len(sentence))
                  for i, w in enumerate(sentence)]
        gap = np.zeros(int(rng.choice([rng.uniform(0.2, 0.6), rng.uniform(0.8, 2.5)]) * SAMPLE_RATE), np.float32)
        parts += [utt, gap]
        t += dur + len(gap) / SAMPLE_RATE
    return np.concatenate(parts), words, voice


def _voiced_rms(x: np.ndarray) -> float:
    """RMS over the 25 ms frames louder than a tenth of the 95th percentile frame: the level of the speech itself."""
    frames = np.square(x[:len(x) // 400 * 400]).reshape(-1, 400).mean(1)
    return float(np.sqrt(frames[frames > 0.01 * np.percentile(frames, 95)].mean() + 1e-12))


def record(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clean synthetic speech as a microphone might have taken it, so that the model hears what real recordings
    sound like rather than only a synthesizer's clean output: a room (reverberation), a band limit (telephone,
    old or cheap microphones), broadcast compression, a level (voiced RMS 0.03-0.25, as real files range) and
    background noise through the pauses too, at 26-50 dB below the speech, so pauses stay below the voiced-frame
    threshold. Each clip draws its own chain; about one in eight is only re-levelled."""
    x = np.asarray(audio, np.float64)
    level = _voiced_rms(x)
    if rng.random() < 0.4:  # a room: exponentially decaying noise, -60 dB after rt60 seconds
        n = int(rng.uniform(0.15, 0.7) * SAMPLE_RATE)
        ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        wet = fftconvolve(x, ir)[:len(x)]
        x = x + rng.uniform(0.15, 0.6) * wet * level / _voiced_rms(wet)
    if rng.random() < 0.4:  # a band: 80-300 Hz up to 2.8-7 kHz
        band = [rng.uniform(80, 300), rng.uniform(2800, 7000)]
        x = sosfilt(butter(4, band, "bandpass", fs=SAMPLE_RATE, output="sos"), x)
    if rng.random() < 0.3:  # compression: gain reduced above a threshold on a 10 ms envelope
        env = np.sqrt(np.convolve(np.square(x), np.ones(160) / 160, "same")) + 1e-9
        threshold, ratio = rng.uniform(0.2, 0.5) * np.percentile(env, 95), rng.uniform(2.0, 6.0)
        x = x * np.where(env > threshold, (env / threshold) ** (1 / ratio - 1), 1.0)
    x *= np.exp(rng.uniform(np.log(0.03), np.log(0.25))) / _voiced_rms(x)
    if rng.random() < 0.5:  # background noise: white, pink or brown
        spectrum = np.fft.rfft(rng.standard_normal(len(x)))
        f = np.maximum(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE), 20.0)
        noise = np.fft.irfft(spectrum * f ** -[0.0, 0.5, 1.0][rng.integers(3)], len(x))
        x += noise / np.sqrt(np.mean(np.square(noise))) * _voiced_rms(x) * 10 ** (-rng.uniform(26, 50) / 20)
    return (x / max(1.0, np.abs(x).max() / 0.99)).astype(np.float32)  # a file's samples stay within full scale


def loudness(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS per 15 fps frame, scaled to 0..1 by the clip's 95th percentile. Frame i covers samples [i HOP, (i+1) HOP);
    samples past the audio's end count as silence, so frames beyond it (model_core.pipeline.output_frames keeps the
    frame at the instant the audio ends) are silent rather than NaN."""
    edges = (np.arange(n_frames + 1) * HOP).astype(np.int64)
    energy = np.r_[0.0, np.cumsum(np.square(np.asarray(audio, np.float64)))]
    inside = np.minimum(edges, len(audio))
    rms = np.sqrt((energy[inside[1:]] - energy[inside[:-1]]) / np.diff(edges) + 1e-12)
    return np.clip(rms / max(np.percentile(rms, 95), 1e-6), 0, 1) if n_frames else rms


def voiced_frames(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """15 fps frames with speech: RMS above 8% of the clip's 95th percentile, widened by 2 frames each side."""
    return np.convolve(loudness(audio, n_frames) > 0.08, np.ones(5), "same") > 0


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame runs where mask is True."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2], edges[1::2]))


def _rot(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation matrices (T, 3, 3) about a fixed or per-frame unit axis."""
    axis = np.broadcast_to(np.asarray(axis, np.float64), (len(angle), 3))
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
    k = np.zeros((len(angle), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotations (T, 3, 3) taking unit vector a (3,) to unit vectors b (T, 3)."""
    axis = np.cross(a, b)
    angle = np.arctan2(np.linalg.norm(axis, axis=-1), b @ a)
    return _rot(np.where(np.linalg.norm(axis, axis=-1, keepdims=True) > 1e-9, axis, [1.0, 0, 0]), angle)


X, Y, Z = np.eye(3)  # canonical frame: X the character's left, Y backwards, Z up (it faces -Y)
REST_PAUSE = 0.5  # seconds of silence between speech phrases that end a gesture unit: the hands retract to rest
PHRASE_GAP = 0.25  # seconds: voiced runs closer than this are one speech phrase
PREP_SPEED, STROKE_SPEED, RETRACT_SPEED = 0.7, 1.1, 0.9  # mean hand speeds of the phases, m/s (peaks ~1.9x)
PATH_SMOOTHING = 0.04  # seconds (Gaussian sigma): the hands' paths blend from one move into the next, as arms do


@dataclass
class Speech:
    """What the motion rules read from the audio, per 15 fps frame and per onset (times in seconds)."""

    loud: np.ndarray
    units: list[list[tuple[float, float]]]  # gesture units: lists of speech phrases (start, end)
    onsets: np.ndarray  # onset times
    accent: np.ndarray  # 0..1 per onset: loudness and pitch relative to the clip's speech


def analyse_speech(audio: np.ndarray, n_frames: int) -> Speech:
    """Phrases, gesture units, onsets and their accents (loudness and pitch) of a clip's speech."""
    import librosa
    loud = loudness(audio, n_frames)
    runs = [[s / FPS, e / FPS] for s, e in _runs(loud > 0.08)]
    phrases: list[list[float]] = []
    for s, e in runs:
        if phrases and s - phrases[-1][1] < PHRASE_GAP:
            phrases[-1][1] = e
        else:
            phrases.append([s, e])
    units: list[list[tuple[float, float]]] = []
    for s, e in phrases:
        if units and s - units[-1][-1][1] < REST_PAUSE:
            units[-1].append((s, e))
        else:
            units.append([(s, e)])
    onsets = librosa.onset.onset_detect(y=audio, sr=SAMPLE_RATE, units="time")
    f0 = librosa.yin(audio, fmin=70, fmax=400, sr=SAMPLE_RATE, frame_length=1024, hop_length=256)
    f0_t = np.arange(len(f0)) * 256 / SAMPLE_RATE
    frame = np.minimum((onsets * FPS).astype(int), n_frames - 1)
    voiced_f0 = f0[loud[np.minimum((f0_t * FPS).astype(int), n_frames - 1)] > 0.08]
    median = np.median(voiced_f0) if len(voiced_f0) else 150.0
    pitch = np.array([np.median(f0[(f0_t >= o) & (f0_t < o + 0.12)]) if np.any((f0_t >= o) & (f0_t < o + 0.12))
                      else median for o in onsets])
    level = np.array([loud[i: i + 3].max() for i in frame]) if len(frame) else np.zeros(0)
    accent = np.clip(0.6 * level + 0.4 * np.clip((pitch - median) / (0.15 * median) + 0.5, 0, 1), 0, 1)
    return Speech(loud, units, onsets, accent)


def _min_jerk(keys: list[tuple[float, np.ndarray]], t: np.ndarray) -> np.ndarray:
    """Positions (T, 3) along key positions (time, xyz), minimum-jerk between keys, held before and after."""
    times = np.array([k for k, _ in keys])
    pos = np.array([p for _, p in keys])
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(keys) - 1)
    j = np.minimum(i + 1, len(keys) - 1)
    span = np.maximum(times[j] - times[i], 1e-9)
    u = np.clip((t - times[i]) / span, 0, 1)[:, None]
    return pos[i] + (pos[j] - pos[i]) * (10 * u ** 3 - 15 * u ** 4 + 6 * u ** 5)


def _bumps(centres: list[float], amps: list[float], half: float, t: np.ndarray) -> np.ndarray:
    """Sum of raised-cosine bumps (zero outside centre +- half seconds)."""
    out = np.zeros(len(t))
    for c, a in zip(centres, amps):
        near = np.abs(t - c) < half
        out[near] += a * 0.5 * (1 + np.cos(np.pi * (t[near] - c) / half))
    return out


@dataclass
class Style:
    """A speaker's habits for one clip: dominant hand, expansiveness, rest position, beat rate."""

    dominant: float  # +1 left, -1 right (canonical X of that hand's side)
    expansive: float
    rest: dict  # side (+1 / -1) -> wrist position at rest
    beat_rate: float


def _gesture_target(rng: np.random.Generator, side: float, accent: float, style: Style) -> np.ndarray:
    """A stroke's end position in McNeill's gesture space in front of the torso (torso frame, metres)."""
    lateral = rng.choice([rng.uniform(0.06, 0.14), rng.uniform(0.14, 0.28), rng.uniform(0.28, 0.42)],
                         p=[0.3, 0.45, 0.25]) * (0.75 + 0.35 * accent) * style.expansive
    height = rng.choice([rng.uniform(-0.12, 0.02), rng.uniform(0.02, 0.22), rng.uniform(0.28, 0.42)],
                        p=[0.3, 0.5, 0.2]) + 0.08 * accent
    forward = rng.uniform(0.30, 0.48) + (0.08 if height > 0.25 else 0.0)  # clear of the face
    return np.array([side * max(lateral, 0.07), -forward, height])


def _stroke_lift(rng: np.random.Generator, side: float, accent: float) -> np.ndarray:
    """Where a stroke starts relative to its end: above (a downward stroke), inside (outward) or back (forward)."""
    kind = rng.integers(3)
    lift = [np.array([0.0, 0.02, rng.uniform(0.10, 0.16)]), np.array([-side * 0.13, 0.0, 0.05]),
            np.array([0.0, 0.11, -0.04])][kind]
    return lift * (0.6 + 0.6 * accent)


def _stroke_times(speech: Speech, unit: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(onset, accent) of a unit's strokes: each phrase's most accented early onset, then one every 0.7-1.4 s."""
    strokes = []
    for s, e in unit:
        t_prev = None
        while True:
            lo, hi = (s - 0.05, s + 0.8) if t_prev is None else (t_prev + 0.7, t_prev + 1.4)
            if lo > e - 0.35:
                break
            cand = np.flatnonzero((speech.onsets >= lo) & (speech.onsets < min(hi, e - 0.25)))
            if len(cand):
                k = cand[np.argmax(speech.accent[cand])]
                t_prev = float(speech.onsets[k])
                strokes.append((t_prev, float(speech.accent[k])))
            elif t_prev is None:
                t_prev = s + 0.15
                strokes.append((t_prev, 0.5))
            else:
                break
    return strokes


class _Hand:
    """One hand's key positions (time, xyz) and the spans it holds still, built move by move."""

    def __init__(self, rest: np.ndarray):
        self.rest = rest
        self.keys: list[tuple[float, np.ndarray]] = [(0.0, rest)]
        self.free = 0.0  # when the last move ends
        self.holds: list[list[float]] = []  # [start, end] of post-stroke holds
        self.at_rest = True

    def stroke(self, t_end: float, duration: float, prep: float, start: np.ndarray, end: np.ndarray,
               earliest: float, drift: np.ndarray) -> bool:
        """Preparation (from `earliest` on) to `start`, then the stroke to `end` ending at t_end; a hold before
        it relaxes by `drift`. Moves keep human speeds (PREP_SPEED, STROKE_SPEED): without the time for them
        the hand skips this stroke (False) or, when it is near, strokes from where it is."""
        avail = t_end - max(self.free, earliest)
        here = self.keys[-1][1] if self.at_rest else self.keys[-1][1] + drift
        duration = max(duration, np.linalg.norm(end - start) / STROKE_SPEED)
        prep = max(prep, 0.2, np.linalg.norm(start - here) / PREP_SPEED)
        if duration + prep > avail:  # no time to prepare: stroke straight from here if that is near enough
            start, prep = here, 0.0
            duration = max(0.3, np.linalg.norm(end - here) / STROKE_SPEED)
            if duration > avail:
                return False
        t_start = t_end - duration
        if self.holds and self.holds[-1][1] is None:
            self.holds[-1][1] = t_start - prep
        if prep:
            self.keys.append((t_start - prep, here))
        self.keys += [(t_start, start), (t_end, end)]
        self.holds.append([t_end, None])
        self.free, self.at_rest = t_end + 0.12, False
        return True

    def retract(self, start: float, drift: np.ndarray) -> None:
        """Hold (relaxing by `drift`) until `start`, then return to rest at RETRACT_SPEED (0.3-0.45 s)."""
        start = max(start, self.free)
        if self.holds and self.holds[-1][1] is None:
            self.holds[-1][1] = start
        here = self.keys[-1][1] + drift
        duration = float(np.clip(np.linalg.norm(self.rest - here) / RETRACT_SPEED, 0.4, 0.5))
        self.keys += [(start, here), (start + duration, self.rest)]
        self.free, self.at_rest = start + duration, True

    def holding(self, time: float, margin: float = 0.12) -> bool:
        return any(a + margin <= time <= (b if b is not None else np.inf) - margin for a, b in self.holds)


def _own_side(pos: np.ndarray, side: float) -> np.ndarray:
    """pos kept at least 5 cm on the hand's own side of the midline (two hands never cross)."""
    return np.array([side * max(side * pos[0], 0.05), pos[1], pos[2]])


def _drift(rng: np.random.Generator) -> np.ndarray:
    """How far a held hand relaxes (metres, mostly down and towards the body) before its next move."""
    return np.array([rng.uniform(-0.02, 0.02), rng.uniform(0.0, 0.03), -rng.uniform(0.01, 0.05)])


def hand_paths(speech: Speech, t: np.ndarray, rng: np.random.Generator, style: Style
               ) -> tuple[dict[float, np.ndarray], list[tuple[float, float]], list[tuple[float, float]]]:
    """Wrist positions (T, 3) per side in the torso frame, and the (time, accent) of strokes and of beats."""
    hand = {h: _Hand(style.rest[h]) for h in (1.0, -1.0)}
    strokes: list[tuple[float, float]] = []
    beats: dict[float, tuple[list[float], list[float]]] = {1.0: ([], []), -1.0: ([], [])}
    for u, unit in enumerate(speech.units):
        u_start, u_end = unit[0][0], unit[-1][1]
        mode = rng.choice(["symmetric", "asymmetric", "dominant", "other"], p=[0.35, 0.15, 0.35, 0.15])
        lead = -style.dominant if mode == "other" else style.dominant
        hands = [lead, -lead] if mode in ("symmetric", "asymmetric") else [lead]
        unit_strokes = _stroke_times(speech, unit)
        for k, (onset, acc) in enumerate(unit_strokes):
            target, lift = _gesture_target(rng, lead, acc, style), _stroke_lift(rng, lead, acc)
            duration, prep = rng.uniform(0.3, 0.45), rng.uniform(0.4, 0.6)
            for h in hands:
                if h == lead:
                    end_pos, start_pos = target, _own_side(target + lift, lead)
                elif mode == "symmetric":
                    end_pos, start_pos = target * [-1, 1, 1], _own_side(target + lift, lead) * [-1, 1, 1]
                elif k == 0:  # asymmetric: the other hand makes one supporting stroke, low and near the centre
                    end_pos = np.array([h * rng.uniform(0.08, 0.18), -rng.uniform(0.28, 0.38), rng.uniform(-0.1, 0.04)])
                    start_pos = end_pos + [0, 0.04, 0.06]
                else:
                    continue
                hand[h].stroke(onset + 0.04, duration, prep, start_pos, end_pos, u_start - 0.45, _drift(rng))
            strokes.append((onset, acc))
        stroke_t = np.array([o for o, _ in unit_strokes])
        beat_hands = hands if mode == "symmetric" else [lead]
        for o, a in zip(speech.onsets, speech.accent):  # beats on the other onsets, while holding after a stroke
            if not u_start - 0.05 <= o <= u_end or (len(stroke_t) and np.min(np.abs(stroke_t - o)) < 0.35):
                continue
            if rng.random() >= style.beat_rate:
                continue
            for h in beat_hands:
                if hand[h].holding(o) and (not beats[h][0] or o - beats[h][0][-1] > 0.5):
                    beats[h][0].append(float(o) + 0.03)
                    beats[h][1].append(0.02 + 0.03 * float(a))
        for h in hands:  # the unit ends: retraction to rest in the pause (units are split at REST_PAUSE)
            if not hand[h].at_rest:
                hand[h].retract(u_end, _drift(rng))
    paths = {}
    for h in (1.0, -1.0):
        pos = _min_jerk(sorted(hand[h].keys, key=lambda k: k[0]), t)
        down = _bumps(beats[h][0], beats[h][1], 0.25, t)
        paths[h] = gaussian_filter1d(pos + down[:, None] * np.array([0.0, 0.25, -1.0]), PATH_SMOOTHING * FPS,
                                     axis=0, mode="nearest")
    beat_list = [(c, a) for h in beats for c, a in zip(*beats[h])]
    return paths, strokes, beat_list


def _two_bone_ik(shoulder: np.ndarray, wrist: np.ndarray, upper: float, fore: float, pole: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Upper-arm and forearm directions (T, 3) reaching wrist (T, 3) from shoulder (3,), the elbow towards pole."""
    v = wrist - shoulder
    d = np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 0.15, 0.97 * (upper + fore))
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    perp = pole - (v @ pole)[:, None] * v
    perp /= np.linalg.norm(perp, axis=-1, keepdims=True)
    cos_a = np.clip((upper ** 2 + d ** 2 - fore ** 2) / (2 * upper * d), -1, 1)
    elbow = upper * (cos_a * v + np.sqrt(1 - cos_a ** 2) * perp)
    fore_dir = d * v - elbow
    return elbow / upper, fore_dir / np.linalg.norm(fore_dir, axis=-1, keepdims=True)


def gesture_motion(speech: Speech, n_frames: int, skel: Skeleton, rng: np.random.Generator) -> np.ndarray:
    """Canonical-frame bone directions (T, n_bones, 3) of one clip's gestures, head and torso."""
    t = np.arange(n_frames) / FPS
    rest = dataset_to_canonical(skel.mean.astype(np.float64), skel)
    rest /= np.linalg.norm(rest, axis=-1, keepdims=True)
    joints = to_joints(rest, skel)
    side_name = {1.0: "left", -1.0: "right"}
    bone = {name: i for i, name in enumerate(skel.bones)}
    wrist = {h: joints[skel.pairs[bone[f"{n}_forearm"]][1]] for h, n in side_name.items()}
    style = Style(dominant=1.0 if rng.random() < 0.5 else -1.0, expansive=rng.uniform(0.75, 1.0),
                  rest={h: wrist[h] + [h * rng.uniform(-0.08, 0.02), rng.uniform(0.0, 0.08), rng.uniform(-0.1, 0.02)]
                        for h in wrist},
                  beat_rate=rng.uniform(0.5, 0.9))
    paths, strokes, beats = hand_paths(speech, t, rng, style)
    strong = [(o, a) for o, a in strokes + beats if a > 0.6]
    nod = _bumps([o + 0.05 for o, _ in strong], [np.radians(5 + 8 * a) for _, a in strong], 0.22, t)
    lean = _bumps([o for o, _ in strong], [np.radians(1.5 + 2.5 * a) for _, a in strong], 0.35, t)
    active = {h: np.linalg.norm(paths[h] - style.rest[h], axis=-1) for h in paths}
    turn = np.radians(6) * np.tanh((active[1.0] - active[-1.0]) / 0.1)  # towards the hand farther out of rest
    torso = _rot(X, np.clip(lean, 0, np.radians(6)))
    head = _rot(Z, turn) @ _rot(X, np.clip(nod, 0, np.radians(16)))
    out = np.empty((n_frames, skel.n_bones, 3))
    for b, name in enumerate(skel.bones):  # head and torso bones; the arms are set below
        local = head if name.startswith(("neck", "nose", "left_eye", "right_eye")) else np.eye(3)
        out[:, b] = np.einsum("tij,tjk,k->ti", torso, np.broadcast_to(local, (n_frames, 3, 3)), rest[b])
    for h, n in side_name.items():
        upper_b, fore_b = bone[f"{n}_upper_arm"], bone[f"{n}_forearm"]
        shoulder = joints[skel.pairs[upper_b][0]]
        upper, fore = _two_bone_ik(shoulder, paths[h], skel.lengths[upper_b], skel.lengths[fore_b],
                                   np.array([h * 1.0, 0.2, -1.0]))
        out[:, upper_b] = np.einsum("tij,tj->ti", torso, upper)
        out[:, fore_b] = np.einsum("tij,tj->ti", torso, fore)
        if f"{n}_index1" in bone:  # fingers open with the hand's distance from rest, curl at rest
            hand = torso @ _align(rest[fore_b], fore)
            _fingers(out, hand, rest, skel, n, 0.85 - 0.7 * np.clip(active[h] / 0.15, 0, 1))
    return out


def _fingers(out: np.ndarray, hand: np.ndarray, rest: np.ndarray, skel: Skeleton, side: str,
             curl: np.ndarray) -> None:
    """Finger bone directions: the hand's rotation, each finger's two distal bones curled by `curl` per joint."""
    w = {f: rest[skel.bone_index(f"{side}_{f}_base")] for f in ("pinky", "thumb")}
    palm = np.cross(w["pinky"], w["thumb"]) * (1 if side == "left" else -1)
    for f in ("index", "middle", "pinky", "ring", "thumb"):
        axis = np.cross(rest[skel.bone_index(f"{side}_{f}_base")], palm)
        c = _rot(axis, (0.5 if f == "thumb" else 1.0) * curl)
        for seg, local in (("_base", np.eye(3)), ("1", c), ("2", c @ c)):
            b = skel.bone_index(f"{side}_{f}{seg}")
            out[:, b] = np.einsum("tij,tjk,k->ti", hand, np.broadcast_to(local, c.shape), rest[b])


def make_clip(skel: Skeleton, seed: int, index: int, duration: float, tmp: Path,
              voices: tuple[str, ...] = TRAIN_VOICES) -> Clip:
    """One procedural clip of about `duration` seconds in one of `voices`; deterministic given (seed, index)."""
    rng = np.random.default_rng([seed, index])
    audio, words, voice = make_speech(rng, duration, tmp, voices)
    n_frames = int(len(audio) / HOP)
    dirs = gesture_motion(analyse_speech(audio, n_frames), n_frames, skel, rng)  # from the clean speech
    poses = canonical_to_poses(dirs.astype(np.float32), skel)
    audio = record(audio, np.random.default_rng([seed, index, 1]))  # its own stream: the motion is the same without
    return Clip(f"procedural_{seed}_{index:05d}", poses, audio, words, {"kind": "procedural", "voice": voice})


def _clip_job(args: tuple[str, int, int, float, tuple[str, ...]]) -> Clip:
    """make_clip in a worker process, with a scratch folder of its own."""
    skeleton, seed, index, duration, voices = args
    with tempfile.TemporaryDirectory() as tmp:
        return make_clip(get_skeleton(skeleton), seed, index, duration, Path(tmp), voices)


RULES = "gesture-phases-4"  # names the motion rules: data made by other rules is remade, not reused
SPEECH = "three-synthesizers-recorded-1"  # names the speech rules (make_speech, speak), as RULES the motion's


def recipe(n_clips: int, seed: int, duration: float, voices: str = "train") -> dict:
    """The index's source entry: everything the data depends on besides the skeleton."""
    return {"kind": "procedural", "rules": RULES, "speech": SPEECH, "voices": list(VOICE_SETS[voices]),
            "seed": seed, "n_clips": n_clips, "duration": duration,
            "note": "synthetic speech, rule-based gesture; not human motion"}


def build(out: str | Path, skeleton: str, n_clips: int, seed: int = 0, duration: float = 20.0, jobs: int = 1,
          voices: str = "train") -> dict:
    """Write n_clips procedural clips for `skeleton` to `out` in the project's clip format, in the voices of
    VOICE_SETS[voices] ("train", or "held-out" for evaluation on unheard voices).

    jobs > 1 makes clips in that many processes; the result is the same, clip for clip, as with one."""
    skel = get_skeleton(skeleton)
    source = recipe(n_clips, seed, duration, voices)
    work = [(skeleton, seed, i, duration, VOICE_SETS[voices]) for i in range(n_clips)]
    if jobs <= 1 or n_clips <= 1:
        clips: Iterable[Clip] = map(_clip_job, work)
    else:
        # librosa's gufuncs are numba-compiled with cache=True, and processes that compile one at once can leave the
        # halves of two compilations paired in the on-disk cache; every process that loads it after that segfaults
        # (numba issue 10128; it did so in CI). The first clip, made here, compiles and writes the cache whole, so
        # the processes only read it.
        clips = itertools.chain([_clip_job(work[0])], in_processes(_clip_job, work[1:], jobs))
    return write_dataset(out, clips, skel, source)


def in_processes(job: Callable, work: list, jobs: int, retries: int = 2) -> Iterator:
    """job(item) for each item, in order, in `jobs` spawned processes. A process that dies (a native crash in a
    library) is replaced and the items not yet returned are done again, which changes nothing since each item's
    result depends on the item alone; after `retries` such restarts the crash is raised. (multiprocessing.Pool would
    wait forever for a dead process's result: a test run hung so after a segfault.)"""
    done, restarts = 0, 0
    while done < len(work):
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            for result in pool.map(job, work[done:], chunksize=2):
                done += 1
                yield result
        except BrokenProcessPool as e:
            restarts += 1
            if restarts > retries:
                raise RuntimeError(f"a worker process died {restarts} times (item {done} of {len(work)} not "
                                   f"done): {e}") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a procedural co-speech dataset (not human motion).")
    p.add_argument("out")
    p.add_argument("--skeleton", default="ted_gesture", choices=["ted_gesture", "ted_expressive"])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=20.0, help="approximate seconds per clip")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (the data does not depend on it)")
    p.add_argument("--voices", default="train", choices=sorted(VOICE_SETS),
                   help="train: the training voices; held-out: only HELD_OUT_VOICES, for evaluation")
    p.add_argument("--keep", action="store_true",
                   help="leave OUT alone when it already holds this recipe (same rules, skeleton, clips, seed)")
    a = p.parse_args(argv)
    index_path = Path(a.out) / "index.json"
    if a.keep and index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("skeleton") == a.skeleton and index.get("source") == recipe(a.clips, a.seed, a.duration,
                                                                                 a.voices):
            print(f"{a.out}: up to date (sha256 {index['sha256'][:12]})")
            return
    index = build(a.out, a.skeleton, a.clips, a.seed, a.duration, a.jobs, a.voices)
    print(f"{len(index['clips'])} clips, {index['n_frames']} frames ({index['n_frames'] / FPS / 60:.1f} min), "
          f"sha256 {index['sha256'][:12]}")


if __name__ == "__main__":
    main()
