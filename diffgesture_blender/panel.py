"""The sidebar panel "Generate gestures from audio" (3D Viewport > Sidebar > DiffGesture)."""
import bpy

from . import generation, properties, scene_writer, shared
from .operators import bone_map, exporter, generate, take
from .request import mapping_problems
from .retarget import ROLES, bone_maps
from .session import SESSION


class DIFFGESTURE_PT_generate(bpy.types.Panel):
    """Audio, rig, checkpoint and sampling settings, the Generate button and its progress."""
    bl_label = "Generate gestures from audio"
    bl_idname = "DIFFGESTURE_PT_generate"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DiffGesture"

    def draw(self, context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.diffgesture

        layout.prop(props, "audio_source", expand=True)
        if props.audio_source == "FILE":
            layout.prop(props, "audio_path")
            layout.prop(props, "start_frame")
            layout.prop(props, "add_sound")
            if props.add_sound:
                layout.prop(props, "pack_sound")
        else:
            layout.prop(props, "audio_strip")
        layout.prop(props, "armature")
        if props.armature is not None:
            self.draw_mapping(layout, props.armature)
            layout.prop(props, "allow_partial")

        col = layout.column(heading="Drive")
        col.prop(props, "drive_spine")
        col.prop(props, "drive_arms")
        fingers = col.row()
        fingers.active = scene_writer.checkpoint_has_fingers(generate.chosen_checkpoint(context)) is not False
        fingers.prop(props, "drive_fingers", text="Fingers" if fingers.active else "Fingers (none in this checkpoint)")

        layout.prop(props, "checkpoint_source")
        if props.checkpoint_source == "FILE":
            layout.prop(props, "checkpoint_path")
        draw_options(layout, props, advanced=False)
        header, advanced = layout.panel("diffgesture_advanced", default_closed=True)
        header.label(text="Advanced")
        if advanced is not None:  # open
            draw_options(advanced, props, advanced=True)

        gen = generation.active()
        if gen is None:
            layout.operator(generate.DIFFGESTURE_OT_generate.bl_idname, icon="PLAY")
            layout.operator(exporter.DIFFGESTURE_OT_export.bl_idname, icon="EXPORT")
            if take.takes_poll(context):
                self.draw_take(layout, context)
            if SESSION.last_failure is not None:  # the report fades; the panel keeps saying why
                kind, message = SESSION.last_failure
                layout.label(text=message, icon="ERROR" if kind == "ERROR" else "INFO")
        else:
            layout.progress(factor=gen.fraction, text=gen.status())
            layout.label(text="Esc cancels", icon="INFO")

    def draw_take(self, layout: bpy.types.UILayout, context) -> None:
        """Controls for the armature's current generated action: re-roll a range, apply the intensity."""
        box = layout.box()
        box.label(text=f"Take: {context.scene.diffgesture.armature.animation_data.action.name}", icon="ACTION")
        if context.scene.use_preview_range:
            box.label(text=f"Range: preview {context.scene.frame_preview_start}-{context.scene.frame_preview_end}")
        else:
            row = box.row(align=True)
            row.prop(context.scene.diffgesture, "reroll_start")
            row.prop(context.scene.diffgesture, "reroll_end")
        box.operator(take.DIFFGESTURE_OT_reroll.bl_idname, icon="FILE_REFRESH")
        box.operator(take.DIFFGESTURE_OT_set_intensity.bl_idname, icon="MOD_AMPLITUDE")

    def draw_mapping(self, layout: bpy.types.UILayout, obj: bpy.types.Object) -> None:
        """The detected preset, coverage, and every role with the bone it uses (click to change)."""
        detection = bone_maps.detect(obj)
        mapping = bone_maps.get_bone_map(obj) or detection.mapping
        box = layout.box()
        header = box.row()
        header.use_property_split = False
        header.label(text=f"Bones: {detection.preset or 'custom'} ({len(mapping)}/{detection.total} mapped)",
                     icon="ARMATURE_DATA")
        header.operator(bone_map.DIFFGESTURE_OT_detect_bones.bl_idname, text="", icon="VIEWZOOM")
        header.operator(bone_map.DIFFGESTURE_OT_load_bone_map.bl_idname, text="", icon="IMPORT")
        header.operator(bone_map.DIFFGESTURE_OT_save_bone_map.bl_idname, text="", icon="EXPORT")
        for problem in mapping_problems(obj, mapping):
            box.label(text=problem, icon="ERROR")
        for vetoed in detection.vetoed:
            box.label(text=f"not used: {vetoed}", icon="INFO")
        missing = set(bone_maps.missing_required(mapping))
        col = box.column(align=True)
        for role in ROLES:
            row = col.row(align=True)
            row.alert = role in missing
            row.label(text=role)
            op = row.operator(bone_map.DIFFGESTURE_OT_set_bone.bl_idname, text=mapping.get(role) or "-")
            op.role = role


def draw_options(layout: bpy.types.UILayout, props: bpy.types.PropertyGroup, advanced: bool) -> None:
    """The generation options of the table, the basic or the advanced ones, that apply to the preset's sampler.
    One a preset sets has its override switch beside it, and shows the preset's value while that is off."""
    for name, o in properties.OPTIONS.items():
        if o.advanced != advanced or not properties.applies(props, name):
            continue
        if not o.preset_sets:
            layout.prop(props, properties.property_name(name))
            continue
        override = properties.override_name(name)
        row = layout.row(heading=o.label)
        row.prop(props, override, text="")
        if getattr(props, override):
            row.prop(props, properties.property_name(name), text="")
        else:
            value = getattr(shared.settings.preset(props.sampler), name)
            row.label(text=f"{('On' if value else 'Off') if o.kind is bool else value} (the preset's)")


CLASSES = (DIFFGESTURE_PT_generate,)
