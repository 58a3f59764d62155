"""The one module that writes a generation into the .blend: actions (through retargeting's keying) with their take
records, the sound strip, the scene's frame range; and a re-roll or a new intensity into a generated action. It runs
only once a result is complete, so a failed generation changes nothing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import bpy
import numpy as np

from . import retarget, shared, takes
from .request import Request, UsageError, checkpoint_file
from .session import SESSION

MAX_CHANNELS = 128  # the sequencer's channels
MIN_FPS, MAX_FPS = 1, 1000  # scene frame rates keys are written at (Blender allows up to 32767 / 0.0001)


@dataclass
class Summary:
    """What a generation wrote and how it ran."""
    audio: str
    armature: str
    actions: list[str]  # one per variation; the first is assigned to the armature
    frame_start: int  # the scene frames of the first and the last key
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
    """Key a read result file (shared.protocol.read_result) onto the armature, add the sound, widen the frame range.
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
    end = r.start_frame + math.ceil(meta["duration"] * fps)  # at or past the sound's end (Blender rounds it)
    notes = list(notes)
    channel = free_channel(scene, r.start_frame, end) if r.add_sound else None
    if r.add_sound and channel is None:
        notes.append(f"the sound strip was not added: all {MAX_CHANNELS} sequencer channels are busy over frames "
                     f"{r.start_frame}-{end}")
    actions, strip, sound = [], None, r.sound
    with undo_on_failure(scene, obj):
        if channel is not None:
            strip = add_sound_strip(scene, r.audio, r.start_frame, channel, r.pack_sound)
            sound = scene.sequence_editor.strips_all[strip].sound.name
        for v in reversed(range(len(directions))):  # the first variation is applied last, so it stays assigned
            action = retarget.apply_motion(obj, directions[v], meta["skeleton"], mapping, src_fps=float(meta["fps"]),
                                           start_frame=r.start_frame, action_name=names[v], parts=set(r.parts),
                                           nla_strip=r.nla_strip, partial=r.allow_partial)
            action.use_fake_user = len(directions) > 1
            take = takes.Take(
                audio=str(Path(r.audio).resolve()), checkpoint=r.checkpoint,
                checkpoint_sha256=meta["checkpoint_sha256"], skeleton=meta["skeleton"], start_frame=r.start_frame,
                scene_fps=fps, src_fps=float(meta["fps"]), duration=float(meta["duration"]),
                settings=dict(meta["settings"]), bone_map=dict(mapping), parts=sorted(r.parts),
                allow_partial=r.allow_partial, poses=result["poses"][v], sound=sound)
            action[takes.KEY] = take.to_property()
            actions.insert(0, action.name)
        first, last = take.frames()  # the keys' frames (every variation has as many)
        scene.frame_start = min(scene.frame_start, first)
        sound_end = scene.sequence_editor.strips_all[strip].frame_final_end - 1 if strip else last  # its last frame
        scene.frame_end = max(scene.frame_end, last, sound_end)  # the keys, and the whole sound when a strip plays it
    SESSION.skeletons[str(checkpoint_file(r.checkpoint))] = meta["skeleton"]
    noted = set(r.parts)
    if not r.insist_fingers and not (has_fingers(meta["skeleton"]) and any(role in mapping for role in
                                                                           retarget.PARTS["fingers"])):
        noted.discard("fingers")  # "fingers when possible": no warning that they were not possible
    return Summary(audio=str(r.audio), armature=obj.name, actions=actions, frame_start=first, frame_end=last,
                   duration=meta["duration"], skeleton=meta["skeleton"], sound_strip=strip, seconds=meta["seconds"],
                   device=meta["device"],
                   notes=notes + retarget.rig_notes(obj, mapping, meta["skeleton"], noted))


def rekey_take(scene: bpy.types.Scene, armature_name: str, take: takes.Take, poses: np.ndarray,
               frames: tuple[int, int], settings: dict | None = None, reroll: list[int] | None = None) -> int:
    """Key a take's new poses (as sampled, 15 fps, the whole take) at its intensity over scene frames
    frames[0]..frames[1] of the armature's current action (the take's), and record them; keys outside the range and
    other curves stay as they are. The settings (e.g. a new intensity) and a re-roll [first, last, seed] go into the
    record. Returns the keys written. Checked first; should writing still fail, the action's keys and record are put
    back."""
    if not np.isfinite(poses).all():
        raise ValueError("the motion holds non-finite values (NaN or Inf)")
    obj = bpy.data.objects[armature_name]
    action = obj.animation_data.action
    new = replace(take, poses=np.asarray(poses, np.float32), settings=settings or take.settings,
                  rerolls=take.rerolls + ([reroll] if reroll else []))
    with undo_on_failure(scene, obj, rekeyed=action):
        written = retarget.rekey_range(obj, action, new.directions(), take.skeleton, take.bone_map,
                                       src_fps=take.src_fps, dst_fps=take.scene_fps, start_frame=take.start_frame,
                                       frames=frames, parts=set(take.parts), partial=take.allow_partial)
        action[takes.KEY] = new.to_property()
    return written


def set_intensity(scene: bpy.types.Scene, armature_name: str, intensity: float) -> tuple[str, int]:
    """Key the armature's current generated action again from its recorded poses (as sampled) at a new intensity
    (the whole take; the user's other actions, NLA strips and curves untouched); the action's name and the keys
    written."""
    obj = bpy.data.objects.get(armature_name)
    action, take = takes.current(obj)
    settings = {**take.settings, "intensity": float(intensity)}
    try:
        shared.settings.GenerationSettings.from_dict(settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return action.name, rekey_take(scene, obj.name, take, take.poses, take.frames(), settings=settings)


def has_fingers(skeleton: str) -> bool:
    return "left_middle_base" in shared.skeleton.get_skeleton(skeleton).bones


def checkpoint_has_fingers(checkpoint: str) -> bool | None:
    """Whether a checkpoint's motion has fingers, once a generation in this session has used it; else None."""
    skeleton = SESSION.skeletons.get(str(checkpoint_file(checkpoint)))
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


def _keys(action: bpy.types.Action, slot) -> list:
    """Every key of an action's slot with what defines it (positions, handles, their types, interpolation)."""
    from bpy_extras import anim_utils
    bag = anim_utils.action_get_channelbag_for_slot(action, slot)
    state = []
    for fc in (bag.fcurves if bag is not None else []):
        points = fc.keyframe_points
        arrays = {}
        for name in ("co", "handle_left", "handle_right"):
            arrays[name] = np.empty(2 * len(points), np.float32)
            points.foreach_get(name, arrays[name])
        kinds = [(k.interpolation, k.handle_left_type, k.handle_right_type, k.easing, k.type) for k in points]
        state.append((fc.data_path, fc.array_index, arrays, kinds))
    return state


def _put_keys(action: bpy.types.Action, slot, state: list) -> None:
    """Put back the keys _keys read (each curve's points cleared and written again as they were)."""
    from bpy_extras import anim_utils
    bag = anim_utils.action_get_channelbag_for_slot(action, slot)
    for path, index, arrays, kinds in state:
        fc = bag.fcurves.find(path, index=index)
        fc.keyframe_points.clear()
        fc.keyframe_points.add(len(kinds))
        for name in ("co", "handle_left", "handle_right"):
            fc.keyframe_points.foreach_set(name, arrays[name])
        for k, (interpolation, left, right, easing, kind) in zip(fc.keyframe_points, kinds):
            k.interpolation, k.handle_left_type, k.handle_right_type, k.easing, k.type = (interpolation, left, right,
                                                                                         easing, kind)


@contextmanager
def undo_on_failure(scene: bpy.types.Scene, obj: bpy.types.Object, rekeyed: bpy.types.Action | None = None):
    """Run a block that writes a result into the .blend; if it raises, remove what it added (actions, NLA tracks,
    sound strips and their sounds), restore the armature's assignment and the frame range, and the keys and take
    record of the action being re-keyed (`rekeyed`, the armature's current action), then re-raise."""
    anim = obj.animation_data
    keys = _keys(rekeyed, anim.action_slot) if rekeyed is not None else None
    record = rekeyed[takes.KEY].to_dict() if rekeyed is not None and takes.KEY in rekeyed else None
    previous = anim.action if anim is not None else None
    before = {"actions": {a.as_pointer() for a in bpy.data.actions},
              "sounds": {s.as_pointer() for s in bpy.data.sounds},
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
        for s in [s for s in bpy.data.sounds if s.as_pointer() not in before["sounds"]]:
            bpy.data.sounds.remove(s)  # a removed strip's sound
        scene.frame_start, scene.frame_end = before["frames"]
        if rekeyed is not None:
            _put_keys(rekeyed, before["slot"], keys)
            if record is not None:
                rekeyed[takes.KEY] = record
        raise


def sound_path(audio: Path) -> str:
    """Relative (//...) when the audio lies in the saved .blend's folder, else absolute: a relative path that climbs
    out of the project (//../../x.wav) breaks as soon as the .blend moves."""
    audio = Path(audio).resolve()
    if bpy.data.filepath and audio.is_relative_to(Path(bpy.data.filepath).resolve().parent):
        return bpy.path.relpath(str(audio))
    return str(audio)
