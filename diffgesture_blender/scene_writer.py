"""The one module that writes a generation into the .blend: actions (through retargeting's keying), the sound strip,
the scene's frame range. It runs only once a result is complete, so a failed generation changes nothing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import bpy

from . import core, retarget
from .request import Request, resolve_checkpoint

_skeletons: dict[str, str] = {}  # checkpoint path -> the skeleton its results had (this session)


@dataclass
class Summary:
    """What a generation wrote and how it ran."""
    audio: str
    armature: str
    actions: list[str]  # one per variation; the first is assigned to the armature
    frame_start: int
    frame_end: int
    duration: float  # seconds of audio
    skeleton: str
    sound_strip: str | None
    seconds: float  # sampling time in the worker
    device: str
    notes: list[str]  # warnings for the user: worker notes, then what the rig could not show

    def to_dict(self) -> dict:
        return asdict(self)


def write_motion(scene: bpy.types.Scene, request: Request, armature_name: str, mapping: dict[str, str],
                 result: dict, notes: list[str]) -> Summary:
    """Key a read result file (core.protocol.read_result) onto the armature, add the sound, widen the frame range."""
    meta, directions = result["meta"], result["directions"]
    r = request
    obj = bpy.data.objects[armature_name]
    stem = Path(r.audio).stem
    names = [stem] if len(directions) == 1 else [f"{stem}.v{v + 1}" for v in range(len(directions))]
    actions = []
    for v in reversed(range(len(directions))):  # the first variation is applied last, so it stays assigned
        action = retarget.apply_motion(obj, directions[v], meta["skeleton"], mapping, src_fps=float(meta["fps"]),
                                       start_frame=r.start_frame, action_name=names[v], parts=set(r.parts),
                                       nla_strip=r.nla_strip, partial=r.allow_partial)
        action.use_fake_user = len(directions) > 1
        actions.insert(0, action.name)
    _skeletons[str(resolve_checkpoint(r.checkpoint))] = meta["skeleton"]
    noted = set(r.parts)
    if not r.insist_fingers and not (has_fingers(meta["skeleton"]) and any(role in mapping for role in
                                                                           retarget.PARTS["fingers"])):
        noted.discard("fingers")  # "fingers when possible": no warning that they were not possible
    fps = scene.render.fps / scene.render.fps_base
    end = r.start_frame + math.ceil(meta["duration"] * fps)
    strip = add_sound_strip(scene, r.audio, r.start_frame, end, r.pack_sound) if r.add_sound else None
    scene.frame_start = min(scene.frame_start, r.start_frame)
    scene.frame_end = max(scene.frame_end, end)
    return Summary(audio=str(r.audio), armature=obj.name, actions=actions, frame_start=r.start_frame, frame_end=end,
                   duration=meta["duration"], skeleton=meta["skeleton"], sound_strip=strip, seconds=meta["seconds"],
                   device=meta["device"],
                   notes=notes + retarget.rig_notes(obj, mapping, meta["skeleton"], noted))


def has_fingers(skeleton: str) -> bool:
    return "left_middle_base" in core.skeleton.get_skeleton(skeleton).bones


def checkpoint_has_fingers(checkpoint: str) -> bool | None:
    """Whether a checkpoint's motion has fingers, once a generation in this session has used it; else None."""
    skeleton = _skeletons.get(str(resolve_checkpoint(checkpoint)))
    return None if skeleton is None else has_fingers(skeleton)


def add_sound_strip(scene: bpy.types.Scene, audio: Path, start: int, end: int, pack: bool = False) -> str:
    """Put the audio in the sequencer at `start`, on the lowest channel free over [start, end]; packed into the
    .blend, or by a path that survives moving the .blend (see sound_path)."""
    seq = scene.sequence_editor_create()
    busy = {s.channel for s in seq.strips if s.frame_final_start < end and s.frame_final_end > start}
    channel = next(c for c in range(1, 129) if c not in busy)
    strip = seq.strips.new_sound(Path(audio).stem, sound_path(audio), channel, start)
    if pack:
        strip.sound.pack()
    return strip.name


def sound_path(audio: Path) -> str:
    """Relative (//...) when the audio lies in the saved .blend's folder, else absolute: a relative path that climbs
    out of the project (//../../x.wav) breaks as soon as the .blend moves."""
    audio = Path(audio).resolve()
    if bpy.data.filepath and audio.is_relative_to(Path(bpy.data.filepath).resolve().parent):
        return bpy.path.relpath(str(audio))
    return str(audio)
