"""A generated take as a file other tools read, through Blender's own exporters: FBX and glTF carry the armature,
its meshes and that one action; BVH carries the armature's motion. The scene is left as it was (selection, active
object, the armature's action, the frame range), so exporting changes nothing in the .blend."""
from __future__ import annotations

from pathlib import Path

import bpy

EXPORT_SUFFIXES = (".fbx", ".glb", ".gltf", ".bvh")


def check_export_path(path: Path) -> Path:
    """The absolute path to export to, or ValueError naming what is wrong (checked before generating)."""
    path = Path(bpy.path.abspath(str(path))).resolve()
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise ValueError(f"cannot export to {path.name}: choose a file ending in {', '.join(EXPORT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise ValueError(f"cannot export to {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"cannot export to {path}: it is a folder")
    return path


def export_take(context: bpy.types.Context, armature: bpy.types.Object, action: bpy.types.Action, path: Path) -> None:
    """Write `action` on `armature` (and the meshes it deforms, for FBX/glTF) to `path` by its suffix."""
    path = check_export_path(path)
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
            bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True, object_types={"ARMATURE", "MESH"},
                                     bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
                                     add_leaf_bones=False)
        elif suffix in (".glb", ".gltf"):
            bpy.ops.export_scene.gltf(filepath=str(path), use_selection=True,
                                      export_format="GLB" if suffix == ".glb" else "GLTF_SEPARATE",
                                      export_animation_mode="ACTIVE_ACTIONS")
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
