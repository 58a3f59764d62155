"""A generated take as a file other tools read, through Blender's own exporters: FBX and glTF carry the armature,
its meshes and that one action, as one animation named after the take whose first frame (where its speech starts) is
at t = 0; BVH carries the armature's motion. The scene is left as it was (selection, active object, the armature's
action and NLA tracks, the frame range), so exporting changes nothing in the .blend."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import bpy

from . import shared

EXPORT_SUFFIXES = (".fbx", ".glb", ".gltf", ".bvh")
# (the format's first bytes, the creator Blender records) of what each exporter writes
EXPORT_SIGNATURES = {".fbx": (b"Kaydara FBX Binary", b"Blender"), ".glb": (b"glTF", b"Blender I/O"),
                     ".gltf": (b"{", b"Blender I/O"), ".bvh": (b"HIERARCHY", b"")}


def check_export_path(path: Path, keep: tuple = ()) -> Path:
    """The absolute path to export to, or ValueError naming what is wrong (checked before generating): a new file,
    or an earlier export of the same format that Blender wrote (shared.files.check_output), none of the `keep` files."""
    path = Path(os.path.abspath(bpy.path.abspath(str(path))))
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise ValueError(f"cannot export to {path.name}: choose a file ending in {', '.join(EXPORT_SUFFIXES)}")
    return shared.files.check_output(path, keep, ours=is_blender_export, what="the export",
                                   kind=f"a {path.suffix.lower()} file Blender exported")


def is_blender_export(path: Path) -> bool:
    """Whether a file is what Blender's exporter for its suffix writes, by its first bytes: the format's signature
    and, where the format records one, Blender as its creator (a BVH records none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    signature, creator = EXPORT_SIGNATURES[path.suffix.lower()]
    return head.startswith(signature) and creator in head


def export_take(context: bpy.types.Context, armature: bpy.types.Object, action: bpy.types.Action, path: Path) -> None:
    """Write `action` on `armature` (and the meshes it deforms, for FBX/glTF) to `path` by its suffix, after
    check_export_path, through a temporary file renamed over it when done (shared.files.replacing; a .gltf names its
    .bin after itself, so it is written in place)."""
    path = check_export_path(path)
    with contextlib.nullcontext(path) if path.suffix.lower() == ".gltf" else shared.files.replacing(path) as target:
        _export(context, armature, action, target)


def _export(context: bpy.types.Context, armature: bpy.types.Object, action: bpy.types.Action, path: Path) -> None:
    scene, view_layer = context.scene, context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    active, range_ = view_layer.objects.active, (scene.frame_start, scene.frame_end)
    anim = armature.animation_data or armature.animation_data_create()
    previous, slot = anim.action, getattr(anim, "action_slot", None)
    try:
        for o in selected:
            o.select_set(False)
        for o in [armature, *(c for c in armature.children_recursive if c.type == "MESH")]:
            o.select_set(True)
        view_layer.objects.active = armature
        anim.action = action
        scene.frame_start, scene.frame_end = (int(round(f)) for f in action.frame_range)
        suffix = path.suffix.lower()
        if suffix == ".fbx":
            export_fbx(anim, action, path)
        elif suffix in (".glb", ".gltf"):
            bpy.ops.export_scene.gltf(filepath=str(path), use_selection=True,
                                      export_format="GLB" if suffix == ".glb" else "GLTF_SEPARATE",
                                      export_animation_mode="ACTIVE_ACTIONS", export_anim_slide_to_zero=True,
                                      export_nla_strips_merged_animation_name=action.name)
        else:
            bpy.ops.export_anim.bvh(filepath=str(path), frame_start=scene.frame_start, frame_end=scene.frame_end)
    finally:
        anim.action = previous
        if slot is not None and previous is not None:
            anim.action_slot = slot
        scene.frame_start, scene.frame_end = range_
        for o in view_layer.objects:
            o.select_set(o in selected)
        view_layer.objects.active = active


def export_fbx(anim: bpy.types.AnimData, action: bpy.types.Action, path: Path) -> None:
    """Write the selection to an FBX whose one take is `action`, named after it and starting at t = 0: the exporter
    starts a take at zero only for NLA strips (its scene take keeps the frame's own time, so frame 1 is 1/fps), so the
    action goes on a strip of its own for the export, with the other tracks muted, and all is put back after."""
    muted = {track: track.mute for track in anim.nla_tracks}
    track = anim.nla_tracks.new()
    try:
        for other in muted:
            other.mute = True
        track.strips.new(action.name, int(action.frame_range[0]), action)
        bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True, object_types={"ARMATURE", "MESH"},
                                 bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=True,
                                 add_leaf_bones=False)
    finally:
        anim.nla_tracks.remove(track)
        for other, mute in muted.items():
            other.mute = mute
