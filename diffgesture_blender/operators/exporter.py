"""Export Take: the armature's current action through Blender's own FBX, glTF or BVH exporter (export.py)."""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..export import export_take


class DIFFGESTURE_OT_export(bpy.types.Operator):
    """Export the armature's current action (with the armature and its meshes) through Blender's own exporter:
    FBX, glTF (.glb/.gltf) or BVH, by the file's ending"""
    bl_idname = "diffgesture.export"
    bl_label = "Export Take"
    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.fbx;*.glb;*.gltf;*.bvh", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        obj = context.scene.diffgesture.armature
        return obj is not None and obj.animation_data is not None and obj.animation_data.action is not None

    def invoke(self, context, event):
        obj = context.scene.diffgesture.armature
        self.filepath = bpy.path.ensure_ext(bpy.path.clean_name(obj.animation_data.action.name), ".fbx")
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        obj = context.scene.diffgesture.armature
        try:
            export_take(context, obj, obj.animation_data.action, Path(self.filepath))
        except (ValueError, RuntimeError, OSError) as e:  # a path the rule refuses, or the exporter's own error
            self.report({"ERROR"}, str(getattr(e, "strerror", None) or e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {obj.animation_data.action.name} to {self.filepath}")
        return {"FINISHED"}


CLASSES = (DIFFGESTURE_OT_export,)
