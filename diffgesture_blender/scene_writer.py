"""The one module that writes a generation into the .blend: actions (through retargeting's keying), the sound strip,
the scene's frame range. It runs only once a result is complete, so a failed generation changes nothing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import bpy
import numpy as np

from . import core, retarget
from .request import Request, resolve_checkpoint

MAX_CHANNELS = 128  # the sequencer's channels
MIN_FPS, MAX_FPS = 1, 1000  # scene frame rates keys are written at (Blender allows up to 32767 / 0.0001)
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
    """Key a read result file (core.protocol.read_result) onto the armature, add the sound, widen the frame range.
    What can be checked is checked first; should writing still fail, everything written so far is undone."""
    meta, directions = result["meta"], result["directions"]
    if not np.isfinite(directions).all():
        raise ValueError("the result holds non-finite values (NaN or Inf)")
    r = request
    obj = bpy.data.objects[armature_name]
    stem = Path(r.audio).stem
    names = [stem] if len(directions) == 1 else [f"{stem}.v{v + 1}" for v in range(len(directions))]
    fps = scene.render.fps / scene.render.fps_base
    if not MIN_FPS <= fps <= MAX_FPS:  # keys are resampled to the scene's rate: bound their number
        raise ValueError(f"the scene's frame rate is {fps:g} fps; set it within {MIN_FPS}-{MAX_FPS} fps "
                         "(Output Properties > Format)")
    end = r.start_frame + math.ceil(meta["duration"] * fps)
    notes = list(notes)
    channel = free_channel(scene, r.start_frame, end) if r.add_sound else None
    if r.add_sound and channel is None:
        notes.append(f"the sound strip was not added: all {MAX_CHANNELS} sequencer channels are busy over frames "
                     f"{r.start_frame}-{end}")
    actions, strip = [], None
    with undo_on_failure(scene, obj):
        for v in reversed(range(len(directions))):  # the first variation is applied last, so it stays assigned
            action = retarget.apply_motion(obj, directions[v], meta["skeleton"], mapping, src_fps=float(meta["fps"]),
                                           start_frame=r.start_frame, action_name=names[v], parts=set(r.parts),
                                           nla_strip=r.nla_strip, partial=r.allow_partial)
            action.use_fake_user = len(directions) > 1
            actions.insert(0, action.name)
        if channel is not None:
            strip = add_sound_strip(scene, r.audio, r.start_frame, channel, r.pack_sound)
        scene.frame_start = min(scene.frame_start, r.start_frame)
        scene.frame_end = max(scene.frame_end, end)
    _skeletons[str(resolve_checkpoint(r.checkpoint))] = meta["skeleton"]
    noted = set(r.parts)
    if not r.insist_fingers and not (has_fingers(meta["skeleton"]) and any(role in mapping for role in
                                                                           retarget.PARTS["fingers"])):
        noted.discard("fingers")  # "fingers when possible": no warning that they were not possible
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


def free_channel(scene: bpy.types.Scene, start: int, end: int) -> int | None:
    """The lowest sequencer channel with no strip over [start, end], or None when all are busy."""
    seq = scene.sequence_editor
    strips = seq.strips if seq is not None else []
    busy = {s.channel for s in strips if s.frame_final_start < end and s.frame_final_end > start}
    return next((c for c in range(1, MAX_CHANNELS + 1) if c not in busy), None)


def add_sound_strip(scene: bpy.types.Scene, audio: Path, start: int, channel: int, pack: bool = False) -> str:
    """Put the audio in the sequencer at `start` on `channel` (see free_channel); packed into the .blend, or by a
    path that survives moving the .blend (see sound_path)."""
    strip = scene.sequence_editor_create().strips.new_sound(Path(audio).stem, sound_path(audio), channel, start)
    if pack:
        strip.sound.pack()
    return strip.name


@contextmanager
def undo_on_failure(scene: bpy.types.Scene, obj: bpy.types.Object):
    """Run a block that writes a result into the .blend; if it raises, remove what it added (actions, NLA tracks,
    sound strips) and restore the armature's assignment and the frame range, then re-raise."""
    anim = obj.animation_data
    previous = anim.action if anim is not None else None
    before = {"actions": {a.as_pointer() for a in bpy.data.actions},
              "tracks": {t.as_pointer() for t in anim.nla_tracks} if anim is not None else set(),
              "strips": {s.as_pointer() for s in scene.sequence_editor.strips_all} if scene.sequence_editor else set(),
              "slot": anim.action_slot if anim is not None and previous is not None else None,
              "fake_user": previous.use_fake_user if previous is not None else None,
              "frames": (scene.frame_start, scene.frame_end)}
    try:
        yield
    except BaseException:
        if scene.sequence_editor is not None:
            for s in [s for s in scene.sequence_editor.strips if s.as_pointer() not in before["strips"]]:
                scene.sequence_editor.strips.remove(s)
        if obj.animation_data is not None:
            if anim is None:
                obj.animation_data_clear()
            else:
                for t in [t for t in anim.nla_tracks if t.as_pointer() not in before["tracks"]]:
                    anim.nla_tracks.remove(t)
                anim.action = previous
                if previous is not None and before["slot"] is not None:
                    anim.action_slot = before["slot"]
        if previous is not None:
            previous.use_fake_user = before["fake_user"]
        for a in [a for a in bpy.data.actions if a.as_pointer() not in before["actions"]]:
            bpy.data.actions.remove(a)
        scene.frame_start, scene.frame_end = before["frames"]
        raise


def sound_path(audio: Path) -> str:
    """Relative (//...) when the audio lies in the saved .blend's folder, else absolute: a relative path that climbs
    out of the project (//../../x.wav) breaks as soon as the .blend moves."""
    audio = Path(audio).resolve()
    if bpy.data.filepath and audio.is_relative_to(Path(bpy.data.filepath).resolve().parent):
        return bpy.path.relpath(str(audio))
    return str(audio)
