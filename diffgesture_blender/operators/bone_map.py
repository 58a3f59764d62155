"""Bone map edits on the panel's armature: set one role's bone, detect them all, save and load a bone map file."""
from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..retarget import bone_maps
from ..session import SESSION


def _bone_items(self, context) -> list[tuple[str, str, str]]:
    """Bones of the panel's armature, for the search popup (kept referenced: Blender needs the strings alive)."""
    obj = context.scene.diffgesture.armature
    SESSION.bone_items = [("", "(none)", "Unmap this role")] + \
        [(b.name, b.name, "") for b in obj.data.bones] if obj is not None else [("", "(none)", "")]
    return SESSION.bone_items


class DIFFGESTURE_OT_set_bone(bpy.types.Operator):
    """Choose the bone that drives this role"""
    bl_idname = "diffgesture.set_bone"
    bl_label = "Set Bone"
    bl_options = {"REGISTER", "UNDO"}
    bl_property = "bone"

    role: StringProperty(options={"HIDDEN"})
    bone: EnumProperty(name="Bone", items=_bone_items)

    @classmethod
    def poll(cls, context):
        return context.scene.diffgesture.armature is not None

    def invoke(self, context, event):
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        obj = context.scene.diffgesture.armature
        mapping = dict(bone_maps.get_bone_map(obj) or bone_maps.detect(obj).mapping)
        if self.bone:
            mapping[self.role] = self.bone
        else:
            mapping.pop(self.role, None)
        bone_maps.set_bone_map(obj, mapping)
        return {"FINISHED"}


class DIFFGESTURE_OT_detect_bones(bpy.types.Operator):
    """Detect the rig's naming convention and map every role it can (replaces manual edits)"""
    bl_idname = "diffgesture.detect_bones"
    bl_label = "Detect Bones"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.scene.diffgesture.armature is not None

    def execute(self, context):
        obj = context.scene.diffgesture.armature
        detection = bone_maps.detect(obj)
        bone_maps.set_bone_map(obj, detection.mapping)
        self.report({"WARNING"} if detection.missing_required else {"INFO"}, detection.message)
        return {"FINISHED"}


class DIFFGESTURE_OT_save_bone_map(bpy.types.Operator, ExportHelper):
    """Save the rig's bone map (stored or detected) to a JSON file, to reuse on other characters and in headless runs"""
    bl_idname = "diffgesture.save_bone_map"
    bl_label = "Save Bone Map"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return context.scene.diffgesture.armature is not None

    def execute(self, context):
        keep = [bpy.data.filepath] if bpy.data.filepath else []
        try:
            bone_maps.save_file(context.scene.diffgesture.armature, bpy.path.abspath(self.filepath), keep=keep)
        except (OSError, ValueError) as e:  # a path the rule refuses (shared.files), a full disk, a read-only folder
            self.report({"ERROR"}, f"Could not save the bone map: {getattr(e, 'strerror', None) or e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Bone map saved to {self.filepath}")
        return {"FINISHED"}


class DIFFGESTURE_OT_load_bone_map(bpy.types.Operator, ImportHelper):
    """Load a bone map from a JSON file (saved here or with --save-bone-map) and store it on the rig"""
    bl_idname = "diffgesture.load_bone_map"
    bl_label = "Load Bone Map"
    bl_options = {"REGISTER", "UNDO"}
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return context.scene.diffgesture.armature is not None

    def execute(self, context):
        obj = context.scene.diffgesture.armature
        try:
            mapping = bone_maps.load_file(obj, self.filepath)
        except (OSError, ValueError) as e:
            self.report({"ERROR"}, f"Could not load the bone map: {e}")
            return {"CANCELLED"}
        bone_maps.set_bone_map(obj, mapping)
        self.report({"INFO"}, f"Bone map loaded: {len(mapping)} roles mapped")
        return {"FINISHED"}


CLASSES = (DIFFGESTURE_OT_set_bone, DIFFGESTURE_OT_detect_bones, DIFFGESTURE_OT_save_bone_map,
           DIFFGESTURE_OT_load_bone_map)
