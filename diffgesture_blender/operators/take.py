"""The armature's generated take: Re-roll Range (a generation, see generate.py) and Apply Intensity."""
from __future__ import annotations

import bpy

from .. import generation, preferences, scene_writer, takes
from ..request import UsageError
from .generate import GenerationOperator, fail


def reroll_frames(context: bpy.types.Context) -> tuple[int, int]:
    """The frames to re-roll: the timeline's preview range when it is on, else the panel's two fields."""
    scene = context.scene
    if scene.use_preview_range:
        return scene.frame_preview_start, scene.frame_preview_end
    return scene.diffgesture.reroll_start, scene.diffgesture.reroll_end


class DIFFGESTURE_OT_reroll(GenerationOperator, bpy.types.Operator):
    """Sample the frame range (the timeline's preview range, or the two fields) of the armature's generated action
    again with the panel's seed; keys outside the range stay as they are (Esc cancels)"""
    bl_idname = "diffgesture.reroll"
    bl_label = "Re-roll Range"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return takes_poll(context)

    def start(self, context: bpy.types.Context) -> generation.Generation | None:
        props, prefs = context.scene.diffgesture, preferences.get(context)
        try:
            return generation.Generation.create(takes.reroll_request(props.armature, reroll_frames(context),
                                                                     props.seed, prefs.python, prefs.device))
        except UsageError as e:
            fail(self, "ERROR", str(e))
            return None


class DIFFGESTURE_OT_set_intensity(bpy.types.Operator):
    """Key the armature's generated action again at the panel's intensity, from the motion recorded with it (one
    undo step; your other actions, NLA strips and curves are untouched)"""
    bl_idname = "diffgesture.set_intensity"
    bl_label = "Apply Intensity to Take"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return takes_poll(context) and generation.active() is None

    def execute(self, context):
        props = context.scene.diffgesture
        try:
            name, _ = scene_writer.set_intensity(context.scene, props.armature.name, round(props.intensity, 6))
        except UsageError as e:
            return fail(self, "ERROR", str(e))
        except Exception as e:  # the scene writer put everything back
            return fail(self, "ERROR", f"Could not apply the intensity: {e}. Nothing was changed")
        self.report({"INFO"}, f"{name}: intensity {props.intensity:.2f}")
        return {"FINISHED"}


def takes_poll(context: bpy.types.Context) -> bool:
    """The panel's armature has a current action that the add-on generated."""
    obj = context.scene.diffgesture.armature
    anim = obj.animation_data if obj is not None else None
    return anim is not None and anim.action is not None and takes.KEY in anim.action


CLASSES = (DIFFGESTURE_OT_reroll, DIFFGESTURE_OT_set_intensity)
