"""A take: what the add-on records on every action it generates, so that re-roll and intensity can act on it later.

The record is a custom property (KEY) on the action: the audio and the sound datablock that plays it (so that a
re-roll still finds the speech once the file has moved: packed or relinked), the checkpoint and its sha256, the
skeleton, where and at what rate the keys were written, the settings, the bone map and parts, and that variation's
normalised poses at 15 fps as sampled (the intensity is a setting, applied where they become directions; records of
VERSION 1 held them scaled by it and are read back as sampled). An action without it was not made here, and re-roll
and intensity refuse it. The scene writer writes the record; this module reads it and does
the arithmetic.
"""
from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import shared
from .request import Request, UsageError, sound_file

KEY = "diffgesture_take"
VERSION = 2  # 2: the poses as sampled; 1: scaled by the intensity


@dataclass
class Take:
    """One generated action's record."""
    audio: str
    checkpoint: str  # as the request named it ("default", or a path)
    checkpoint_sha256: str
    skeleton: str
    start_frame: int  # the scene frame of the take's first key
    scene_fps: float  # the rate its keys were written at (resampled from src_fps)
    src_fps: float
    duration: float  # seconds of audio
    settings: dict  # GenerationSettings.to_dict() of the generation (intensity: the current one)
    bone_map: dict[str, str]
    parts: list[str]
    allow_partial: bool
    poses: np.ndarray  # (frames at src_fps, pose_dim), as sampled
    rerolls: list[list[int]] = field(default_factory=list)  # [first scene frame, last, seed] of each re-roll
    sound: str | None = None  # the sound datablock of the take's sound strip (or the strip it was read from)

    @property
    def intensity(self) -> float:
        return float(self.settings.get("intensity", 1.0))

    def frames(self) -> tuple[int, int]:
        """The scene frames of the take's first and last keys."""
        n = int(np.floor((len(self.poses) - 1) * self.scene_fps / self.src_fps + 1e-6)) + 1
        return self.start_frame, self.start_frame + n - 1

    def directions(self) -> np.ndarray:
        """Canonical unit directions (frames, bones, 3) of the take's poses at its intensity, as the worker makes
        them (skeleton.directions_at)."""
        return shared.skeleton.directions_at(self.poses, self.intensity, shared.skeleton.get_skeleton(self.skeleton))

    def model_range(self, first: int, last: int) -> tuple[int, int]:
        """The 15 fps frames to sample again for scene frames first..last (inclusive): those whose keys are only
        inside that range, so that no key outside it depends on a changed frame. UsageError when it cannot be."""
        lo_take, hi_take = self.frames()
        if first > last:
            raise UsageError(f"the range {first}-{last} is empty: its start comes after its end")
        if not lo_take <= first <= last <= hi_take:
            raise UsageError(f"the range {first}-{last} is not inside the take (frames {lo_take}-{hi_take}); choose "
                             "frames within it")
        ratio = self.src_fps / self.scene_fps  # model frames per scene frame
        n = len(self.poses)
        lo = 0 if first == lo_take else math.ceil((first - 1 - self.start_frame) * ratio - 1e-6) + 1
        hi = n - 1 if last == hi_take else math.floor((last + 1 - self.start_frame) * ratio + 1e-6) - 1
        if lo > hi:
            raise UsageError(f"the range {first}-{last} is too short to re-roll: at {self.scene_fps:g} fps it must "
                             f"cover at least one of the model's {self.src_fps:g} fps frames with its neighbours, "
                             f"about {math.ceil(3 / ratio)} frames")
        return lo, hi

    def meta(self) -> dict:
        """The take's metadata as a result file (protocol.write_result) holds it."""
        return {"skeleton": self.skeleton, "fps": self.src_fps, "seed": self.settings.get("seed", 0),
                "checkpoint_sha256": self.checkpoint_sha256, "settings": self.settings, "audio": self.audio,
                "duration": self.duration}

    def write_result(self, path: Path) -> None:
        """The take as a result file, the input of a re-roll request."""
        poses = self.poses[None].astype(np.float32)
        shared.protocol.write_result(path, poses, self.directions()[None], self.meta())

    def to_property(self) -> dict:
        """The record as a custom property: the poses as a float array, everything else as one JSON text."""
        fields = {k: v for k, v in asdict(self).items() if k != "poses"}
        return {"version": VERSION, "fields": json.dumps(fields), "shape": list(self.poses.shape),
                "poses": np.asarray(self.poses, np.float64).ravel().tolist()}


def read(action: bpy.types.Action | None) -> Take | None:
    """The record of an action the add-on generated, or None (another action, or no action). Every field and the
    poses' size are checked (check_fields, protocol.check_take) before the poses are read: UsageError naming the
    field when the record is damaged. The poses of a VERSION 1 record are read back as sampled."""
    prop = action.get(KEY) if action is not None else None
    if prop is None:
        return None
    source = f"the DiffGesture record of the action {action.name!r}"
    try:
        fields = shared.files.parse_json(prop["fields"], f"{source} is damaged: its fields")
        shape = tuple(int(x) for x in prop["shape"])
        check_fields(fields, source)
        shared.protocol.check_take({"skeleton": fields["skeleton"], "fps": fields["src_fps"],
                                  "duration": fields["duration"], "settings": fields["settings"]}, (1, *shape), source)
        values = prop["poses"]
        if len(values) != math.prod(shape):
            raise ValueError(f"{source} is damaged: it holds {len(values)} pose values for shape {shape}")
        poses = np.array(values.to_list() if hasattr(values, "to_list") else values, np.float32).reshape(shape)
        version = prop.get("version", 1)
        if type(version) is not int or not 1 <= version <= VERSION:
            raise ValueError(f"{source} is of version {str(version)[:20]}, which this version of the add-on does "
                             f"not read (1..{VERSION}): update DiffGesture, or generate it again")
        if version == 1:
            poses = shared.skeleton.as_sampled(poses, float(fields["settings"].get("intensity", 1.0)), source)
    except (KeyError, TypeError, ValueError) as e:
        message = str(e) if str(e).startswith(source) else f"{source} is damaged ({e})"
        raise UsageError(message if message.endswith("generate it again") else f"{message}; generate it again") \
            from None
    if not np.isfinite(poses).all():
        raise UsageError(f"{source} is damaged: its poses hold non-finite values (NaN or Inf); generate it again")
    return Take(**fields, poses=poses)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MAX_FRAME = 1_048_574  # Blender's last frame
FIELD_CHECKS = {  # field: (test, what it must be)
    "audio": (lambda v: isinstance(v, str), "a path"), "checkpoint": (lambda v: isinstance(v, str), "a path"),
    "checkpoint_sha256": (lambda v: isinstance(v, str), "a text"), "skeleton": (lambda v: isinstance(v, str), "a name"),
    "start_frame": (lambda v: _int(v) and abs(v) <= MAX_FRAME, f"a whole frame within -{MAX_FRAME}..{MAX_FRAME}"),
    "scene_fps": (lambda v: _number(v) and 1 <= v <= 1000, "a frame rate within 1..1000"),
    "src_fps": (lambda v: _number(v) and 1 <= v <= 1000, "a frame rate within 1..1000"),
    "duration": (_number, "a number of seconds"), "settings": (lambda v: isinstance(v, dict), "a table"),
    "bone_map": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for kv in v.items() for x in kv),
                 "a table of role: bone names"),
    "parts": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of part names"),
    "allow_partial": (lambda v: isinstance(v, bool), "true or false"),
    "rerolls": (lambda v: isinstance(v, list) and all(isinstance(r, list) and len(r) == 3 and all(map(_int, r))
                                                      for r in v), "a list of [first, last, seed]"),
    "sound": (lambda v: v is None or isinstance(v, str), "a sound's name or null"),
}


def check_fields(fields, source: str) -> None:
    """Refuse a take record's fields (all but the poses) that are missing, unknown or of the wrong type or range."""
    if not isinstance(fields, dict):
        raise ValueError(f"{source} is damaged: its fields are not a table")
    required = {f.name for f in dataclasses.fields(Take) if f.default is dataclasses.MISSING and
                f.default_factory is dataclasses.MISSING} - {"poses"}
    problems = [f"unknown field {name!r}" for name in fields if name not in FIELD_CHECKS]
    problems += [f"no {name!r}" for name in sorted(required - set(fields))]
    problems += [f"{name} must be {what}, not {repr(fields[name])[:40]}" for name, (test, what) in FIELD_CHECKS.items()
                 if name in fields and not test(fields[name])]
    if problems:
        raise ValueError(f"{source} is damaged: {problems[0]}")


def current(obj: bpy.types.Object | None) -> tuple[bpy.types.Action, Take]:
    """The armature's current action and its record; UsageError when there is none or the add-on did not make it."""
    if obj is None or obj.type != "ARMATURE":
        raise UsageError("choose the armature whose generated action to change")
    action = obj.animation_data.action if obj.animation_data is not None else None
    if action is None:
        raise UsageError(f"{obj.name!r} has no current action: assign the generated action first")
    take = read(action)
    if take is None:
        raise UsageError(f"the action {action.name!r} on {obj.name!r} was not generated by DiffGesture (it has no "
                         "take record), so it cannot be re-rolled or rescaled; assign a generated action")
    return action, take


def reroll_request(obj: bpy.types.Object | None, frames: tuple[int, int], seed: int, python: str,
                   device: str, audio: Path | None = None) -> Request:
    """The request that re-rolls scene frames first..last of the armature's current generated action with `seed`:
    the take's audio (or `audio`, the same speech named by the user), checkpoint, settings, bone map and parts.
    UsageError when it cannot run."""
    _, take = current(obj)
    take.model_range(*frames)  # a range outside the take, or too short, is refused here
    try:
        settings = shared.settings.GenerationSettings.from_dict({**take.settings, "seed": seed})
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    audio, sound = (Path(audio), None) if audio is not None else speech(take)
    return Request(audio=audio, armature=obj.name, python=python, checkpoint=take.checkpoint,
                   device=device, settings=settings, start_frame=take.start_frame, add_sound=False,
                   parts=frozenset(take.parts), allow_partial=take.allow_partial, bone_map=dict(take.bone_map),
                   reroll=(int(frames[0]), int(frames[1])), sound=sound)


def speech(take: Take) -> tuple[Path, str | None]:
    """Where a re-roll reads the take's speech, as a request's audio and sound: the take's sound's packed copy; else
    the recorded file; else the file the sound now points at (relinked). The sound is the one the take recorded, or
    one loaded from the recorded file. UsageError, saying what to do, when none of them holds the audio."""
    recorded = Path(take.audio)
    sound = bpy.data.sounds.get(take.sound) if take.sound else None
    if sound is None:
        sound = next((s for s in bpy.data.sounds if s.filepath and sound_file(s).resolve() == recorded), None)
    if sound is not None and sound.packed_file is not None:
        return recorded, sound.name
    if recorded.is_file():
        return recorded, None
    if sound is not None and sound_file(sound).is_file():
        return sound_file(sound), None
    if sound is None:
        raise UsageError(f"the take's audio is gone: {recorded} does not exist and no sound in this .blend holds it. "
                         "Put the file back there, then re-roll (headless: or name the file with reroll --audio)")
    raise UsageError(f"the take's audio is gone: {recorded} does not exist, and its sound {sound.name!r} is neither "
                     f"packed nor found at {sound_file(sound)}. Put the file back, or point the sound at where the "
                     "file is now (Video Sequencer: the sound strip's Sound panel, or File > External Data > Find "
                     "Missing Files), then re-roll (headless: or name the file with reroll --audio)")
