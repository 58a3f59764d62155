"""A take: what the add-on records on every action it generates, so that re-roll and intensity can act on it later.

The record is a custom property (KEY) on the action: the audio and the sound datablock that plays it (so that a
re-roll still finds the speech once the file has moved: packed or relinked), the checkpoint and its sha256, the
skeleton, where and at what rate the keys were written, the settings, the bone map and parts, and that variation's
normalised poses at 15 fps (as the result file held them, at the recorded intensity). An action without it was not
made here, and re-roll and intensity refuse it. The scene writer writes the record; this module reads it and does
the arithmetic.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import core
from .request import Request, UsageError, sound_file

KEY = "diffgesture_take"
VERSION = 1


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
    poses: np.ndarray  # (frames at src_fps, pose_dim), at settings["intensity"]
    rerolls: list[list[int]] = field(default_factory=list)  # [first scene frame, last, seed] of each re-roll
    sound: str | None = None  # the sound datablock of the take's sound strip (or the strip it was read from)

    @property
    def intensity(self) -> float:
        return float(self.settings.get("intensity", 1.0))

    def frames(self) -> tuple[int, int]:
        """The scene frames of the take's first and last keys."""
        n = int(np.floor((len(self.poses) - 1) * self.scene_fps / self.src_fps + 1e-6)) + 1
        return self.start_frame, self.start_frame + n - 1

    def raw_poses(self) -> np.ndarray:
        """The poses as sampled (intensity 1); a take made at intensity 0 holds none."""
        if self.intensity == 0:
            raise UsageError("this take was generated at intensity 0 (the rest pose), so it holds no motion to keep "
                             "or scale: generate it again")
        return self.poses / np.float32(self.intensity) if self.intensity != 1 else self.poses

    def directions(self) -> np.ndarray:
        """Canonical unit directions (frames, bones, 3) of the take's poses at its intensity, as the worker makes
        them (skeleton.directions_at)."""
        return core.skeleton.directions_at(self.poses, self.intensity, core.skeleton.get_skeleton(self.skeleton))

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
        core.protocol.write_result(path, poses, self.directions()[None], self.meta())

    def to_property(self) -> dict:
        """The record as a custom property: the poses as a float array, everything else as one JSON text."""
        fields = {k: v for k, v in asdict(self).items() if k != "poses"}
        return {"version": VERSION, "fields": json.dumps(fields), "shape": list(self.poses.shape),
                "poses": np.asarray(self.poses, np.float64).ravel().tolist()}


def read(action: bpy.types.Action | None) -> Take | None:
    """The record of an action the add-on generated, or None (another action, or no action)."""
    prop = action.get(KEY) if action is not None else None
    if prop is None:
        return None
    try:
        fields = json.loads(prop["fields"])
        shape = tuple(int(x) for x in prop["shape"])
        poses = np.array(prop["poses"].to_list() if hasattr(prop["poses"], "to_list") else prop["poses"],
                         np.float32).reshape(shape)
        return Take(**fields, poses=poses)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"the DiffGesture record of the action {action.name!r} is damaged ({e}); generate it again")


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
        settings = core.settings.GenerationSettings.from_dict({**take.settings, "seed": seed})
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
