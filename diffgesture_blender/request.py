"""What one generation needs, gathered from the panel or the command line, and its checks against the scene.

Everything here runs before a worker is asked and changes nothing: a request that cannot run raises UsageError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import retarget, shared
from .retarget import bone_maps

GenerationSettings = shared.settings.GenerationSettings
PARTS = tuple(retarget.PARTS)


class UsageError(ValueError):
    """A request that cannot run (missing file, unknown armature, unusable mapping); nothing was started."""


@dataclass
class Request:
    """Everything a generation needs, as plain values gathered from the panel or the command line."""
    audio: Path
    armature: str
    python: str
    checkpoint: str = "default"
    device: str = "auto"
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    start_frame: int = 1
    add_sound: bool = True
    pack_sound: bool = False  # store the audio inside the .blend (else the strip points at the file)
    parts: frozenset[str] = frozenset(PARTS)
    nla_strip: bool = False
    allow_partial: bool = False  # drive the mapped bones even when required roles are unmapped
    bone_map: dict[str, str] | None = None  # from a bone-map file; None: the stored map, else the detected one
    insist_fingers: bool = False  # fingers were named explicitly: warn when they cannot be driven (else: if possible)
    reroll: tuple[int, int] | None = None  # re-roll these scene frames of the armature's generated action instead
    sound: str | None = None  # the sound datablock the audio is (a strip's): when packed, the worker reads its copy


def sampling(preset: str, **choices) -> GenerationSettings:
    """The settings of a preset ("fast", "paper") with the user's choices (None: the preset's), or a UsageError."""
    try:
        return shared.settings.preset(preset, **choices)
    except ValueError as e:
        raise UsageError(str(e)) from None


def checkpoint_file(name: str) -> Path:
    """The file a checkpoint setting names: Blender's // paths made absolute, then settings.resolve_checkpoint
    ('default' or empty: the bundled checkpoint)."""
    return shared.settings.resolve_checkpoint(bpy.path.abspath(name))


def audio_from_strip(scene: bpy.types.Scene, strip_name: str) -> tuple[Path, int, str]:
    """The file behind a sound strip, the frame it starts at and its sound's name (whose packed copy, if any, the
    worker reads: see worker_audio)."""
    seq = scene.sequence_editor
    if seq is None or not any(s.type == "SOUND" for s in seq.strips_all):
        raise UsageError("the sequencer has no sound strip: add one (Video Sequencer > Add > Sound) or choose the "
                         "audio File instead")
    strip = seq.strips_all.get(strip_name)
    if strip is None or strip.type != "SOUND" or strip.sound is None:
        raise UsageError(f"no sound strip named {strip_name!r} in the sequencer")
    return sound_file(strip.sound), int(strip.frame_start), strip.sound.name


def sound_file(sound: bpy.types.Sound) -> Path:
    """The absolute path a sound datablock loads its file from (relative to its library's .blend, if linked)."""
    return Path(bpy.path.abspath(sound.filepath, library=sound.library))


def packed_sound(name: str | None) -> bpy.types.Sound | None:
    """The sound datablock `name` when it holds its audio packed in the .blend, else None."""
    sound = bpy.data.sounds.get(name) if name else None
    return sound if sound is not None and sound.packed_file is not None else None


def worker_audio(request: Request, folder: Path) -> Path:
    """The file the worker reads: the request's sound's packed copy, written into `folder` (the generation's
    temporary folder, deleted with it), when that sound is packed; else the request's audio file."""
    sound = packed_sound(request.sound)
    if sound is None:
        return Path(request.audio)
    path = folder / (Path(sound.filepath).name or f"{bpy.path.clean_name(sound.name)}.wav")
    path.write_bytes(sound.packed_file.data)
    return path


def validate(request: Request) -> tuple[bpy.types.Object, dict[str, str]]:
    """Check the request against its settings, the file system and the scene; return the armature and its mapping."""
    try:
        request.settings.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    audio = Path(request.audio)
    if packed_sound(request.sound) is None:  # else the worker reads the sound's packed copy (worker_audio)
        if not audio.exists():
            raise UsageError(f"audio file not found: {audio}")
        if not audio.is_file():
            raise UsageError(f"the audio path is not a file: {audio}")
    ckpt = checkpoint_file(request.checkpoint)
    if not ckpt.is_file():
        hint = (" (the bundled checkpoint is missing: reinstall the extension)"
                if ckpt == shared.settings.DEFAULT_CHECKPOINT else "")
        raise UsageError(f"checkpoint not found: {ckpt}{hint}")
    obj = bpy.data.objects.get(request.armature)
    if obj is None or obj.type != "ARMATURE":
        raise UsageError(f"no armature object named {request.armature!r}" if obj is None else
                         f"{request.armature!r} is a {obj.type.lower()}, not an armature")
    if obj.library is not None or obj.data.library is not None:
        lib = (obj.library or obj.data.library).filepath
        raise UsageError(f"{obj.name!r} is linked from the library {lib} and cannot be animated here: make it local "
                         "(Object > Relations > Make Local) or add a library override (Object > Library Override)")
    if obj.mode == "EDIT":
        raise UsageError(f"{obj.name!r} is in edit mode: leave edit mode first")
    if not request.parts:
        raise UsageError("choose at least one part to drive (spine/head, arms, fingers)")
    mapping = request.bone_map or bone_maps.current_map(obj)
    problems = mapping_problems(obj, mapping, request.allow_partial)
    if problems:
        partial = (", or allow a partial rig to animate only the mapped bones"
                   if mapping and bone_maps.missing_required(mapping) and not request.allow_partial else "")
        raise UsageError(f"the bones of {obj.name!r} cannot be driven: {'; '.join(problems)}. Map them in the "
                         f"panel's Bones box{partial}")
    return obj, mapping


def mapping_problems(obj: bpy.types.Object, mapping: dict[str, str], allow_partial: bool = False) -> list[str]:
    """Why a bone map cannot drive `obj`, the unmapped required roles named in one item (none: usable)."""
    if not mapping:
        return [f"no bone is mapped to any role (none was recognised as a humanoid bone; needed at least: "
                f"{', '.join(bone_maps.missing_required({}))})"]
    problems = bone_maps.validate(obj, mapping, partial=True)
    missing = bone_maps.missing_required(mapping)
    if missing and not allow_partial:
        problems.insert(0, f"no bone is mapped for the required role{'s' * (len(missing) > 1)} {', '.join(missing)}")
    return problems
