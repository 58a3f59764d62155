"""Operators: Generate and Re-roll Range (modal, non-blocking; blocking when run from a script), Apply Intensity to
Take, bone mapping edits, export, environment."""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import environment, generation, preferences, scene_writer, takes
from .request import Request, UsageError, audio_from_strip, sampling
from .retarget import bone_maps
from .worker_host import HOST

TIMER_INTERVAL = 0.1


def gather(context: bpy.types.Context) -> Request:
    """The panel's settings and the preferences as a plain request."""
    props = context.scene.diffgesture
    prefs = preferences.get(context)
    if props.audio_source == "STRIP":
        audio, start, sound = audio_from_strip(context.scene, props.audio_strip)
        add_sound = False  # the audio is already in the sequencer
    else:
        if not props.audio_path:
            raise UsageError("choose a speech audio file")
        audio, start, add_sound = Path(bpy.path.abspath(props.audio_path)), props.start_frame, props.add_sound
        sound = None
    if props.armature is None:
        raise UsageError("choose the armature to animate")
    settings = sampling(props.sampler, steps=props.steps if props.sampler == "fast" else None, seed=props.seed,
                        variations=props.variations, stabilizer=props.stabilizer,
                        guidance=round(props.guidance, 6),  # a float32 property: 1.15 reads back as 1.1499999761
                        intensity=round(props.intensity, 6))
    parts = {p for p, on in (("spine", props.drive_spine), ("arms", props.drive_arms),
                             ("fingers", props.drive_fingers)) if on}
    checkpoint = chosen_checkpoint(context)
    return Request(audio=audio, armature=props.armature.name, python=prefs.python, checkpoint=checkpoint,
                   device=prefs.device, settings=settings, start_frame=start, add_sound=add_sound,
                   parts=frozenset(parts), allow_partial=props.allow_partial, pack_sound=props.pack_sound,
                   sound=sound)


# How the last Generate of this session ended, when it did not write anything: (report kind, message) for the panel.
last_failure: tuple[str, str] | None = None


def fail(op: bpy.types.Operator, kind: str, message: str) -> set[str]:
    """Report a Generate that changed nothing, and keep the message for the panel."""
    global last_failure
    last_failure = (kind, message)
    op.report({kind}, message)
    return {"CANCELLED"}


def chosen_checkpoint(context: bpy.types.Context) -> str:
    """The panel's checkpoint: its own file, or the preferences' default."""
    props = context.scene.diffgesture
    return props.checkpoint_path if props.checkpoint_source == "FILE" else preferences.get(context).checkpoint


def finish(op: bpy.types.Operator, context: bpy.types.Context, gen: generation.Generation) -> set[str]:
    """Report how a generation ended and, when it produced a result, write it into the scene."""
    global last_failure
    try:
        summary = gen.conclude(context.scene)
    except generation.GenerationFailed as e:
        return fail(op, "INFO" if gen.was_cancelled() else "ERROR", str(e))
    finally:
        gen.close()
    last_failure = None
    for note in summary.notes:
        op.report({"WARNING"}, note)
    op.report({"INFO"}, f"{', '.join(summary.actions)}: frames {summary.frame_start}-{summary.frame_end} on "
                        f"{summary.armature} ({summary.seconds:.1f} s, {summary.device})")
    return {"FINISHED"}


def redraw(context: bpy.types.Context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


class GenerationOperator:
    """How an operator runs a generation: modal with progress and Esc in the UI, blocking from scripts. Operators
    mix it in and say in `start` which generation they create."""

    def start(self, context: bpy.types.Context) -> generation.Generation | None:
        raise NotImplementedError

    def execute(self, context):
        """Blocking run, for scripts and background mode (where modal timers never tick)."""
        gen = self.start(context)
        if gen is None:
            return {"CANCELLED"}
        gen.begin()
        gen.wait()
        return finish(self, context, gen)

    def invoke(self, context, event):
        gen = self.start(context)
        if gen is None:
            return {"CANCELLED"}
        gen.begin()
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        gen = generation.active()
        if gen is None:  # dropped because another file was opened
            self.cancel(context)
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            gen.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not gen.poll():
            context.window_manager.progress_update(int(100 * gen.fraction))
            context.workspace.status_text_set(f"DiffGesture: {gen.status()}  (Esc: cancel)")
            redraw(context)
            return {"PASS_THROUGH"}
        self.cancel(context)
        return finish(self, context, gen)

    def cancel(self, context) -> None:
        """Remove the timer, progress and status text (also called by Blender when the modal is aborted)."""
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)
        redraw(context)


class DIFFGESTURE_OT_generate(GenerationOperator, bpy.types.Operator):
    """Generate gestures for the armature from the speech audio (Esc cancels)"""
    bl_idname = "diffgesture.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER", "UNDO"}

    def start(self, context: bpy.types.Context) -> generation.Generation | None:
        try:
            return generation.Generation.create(gather(context))
        except UsageError as e:
            fail(self, "ERROR", str(e))
            return None


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


def _bone_items(self, context) -> list[tuple[str, str, str]]:
    """Bones of the panel's armature, for the search popup (kept referenced: Blender needs the strings alive)."""
    obj = context.scene.diffgesture.armature
    _bone_items.cache = [("", "(none)", "Unmap this role")] + \
        [(b.name, b.name, "") for b in obj.data.bones] if obj is not None else [("", "(none)", "")]
    return _bone_items.cache


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
        from .export import export_take
        obj = context.scene.diffgesture.armature
        try:
            export_take(context, obj, obj.animation_data.action, Path(self.filepath))
        except (ValueError, RuntimeError, OSError) as e:  # a path the rule refuses, or the exporter's own error
            self.report({"ERROR"}, str(getattr(e, "strerror", None) or e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {obj.animation_data.action.name} to {self.filepath}")
        return {"FINISHED"}


class DIFFGESTURE_OT_create_environment(bpy.types.Operator):
    """Create a Python environment with PyTorch for the worker (downloads about 0.2-3 GB; runs in the background)"""
    bl_idname = "diffgesture.create_environment"
    bl_label = "Create Environment"
    builder: environment.EnvironmentBuilder | None = None

    def execute(self, context):
        cls = type(self)
        if cls.builder is not None and not cls.builder.done:
            self.report({"ERROR"}, "The environment is already being created: wait for it, or press Cancel")
            return {"CANCELLED"}
        if generation.active() is not None:
            self.report({"ERROR"}, "Wait for the running generation to end")
            return {"CANCELLED"}
        plan = environment.pip_plan(environment.gpu_info())
        # what Check said before describes the old environment: forgotten now and when the new one is done
        builder = environment.EnvironmentBuilder(preferences.env_dir(), plan, on_done=HOST.forget_check)
        try:
            builder.start()
        except environment.InstallerBusy as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        HOST.shutdown()  # it may run from the environment being replaced
        HOST.forget_check()
        cls.builder = builder
        custom = preferences.get(context).python != str(environment.venv_python(preferences.env_dir()))
        self.report({"INFO"}, f"{plan.reason}; log: {builder.log_path}" + (
            "; Torch Python is set and stays in use until you clear it" if custom else ""))

        def tick() -> float | None:
            redraw(bpy.context)
            return None if builder.done else 0.5
        bpy.app.timers.register(tick, first_interval=0.5)
        return {"FINISHED"}


class DIFFGESTURE_OT_cancel_environment(bpy.types.Operator):
    """Stop creating the environment (pip is stopped; Create Environment starts again)"""
    bl_idname = "diffgesture.cancel_environment"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        builder = DIFFGESTURE_OT_create_environment.builder
        return builder is not None and not builder.done

    def execute(self, context):
        DIFFGESTURE_OT_create_environment.builder.cancel()
        self.report({"INFO"}, "Creating the environment was cancelled")
        return {"FINISHED"}


class DIFFGESTURE_OT_use_extension_environment(bpy.types.Operator):
    """Clear Torch Python, so that Check and Generate use the extension's own environment"""
    bl_idname = "diffgesture.use_extension_environment"
    bl_label = "Use the Extension's Environment"

    def execute(self, context):
        context.preferences.addons[preferences.__package__].preferences.torch_python = ""
        self.report({"INFO"}, f"Using the extension's environment: {preferences.get(context).python}")
        return {"FINISHED"}


class DIFFGESTURE_OT_check_environment(bpy.types.Operator):
    """Start the worker and show its torch version, CUDA availability and GPU"""
    bl_idname = "diffgesture.check_environment"
    bl_label = "Check"

    def execute(self, context):
        HOST.check(preferences.get(context).python)

        def tick() -> float | None:
            redraw(bpy.context)
            return 0.5 if HOST.check_running() else None
        bpy.app.timers.register(tick, first_interval=0.5)
        return {"FINISHED"}


CLASSES = (DIFFGESTURE_OT_generate, DIFFGESTURE_OT_reroll, DIFFGESTURE_OT_set_intensity, DIFFGESTURE_OT_set_bone,
           DIFFGESTURE_OT_detect_bones, DIFFGESTURE_OT_export, DIFFGESTURE_OT_save_bone_map,
           DIFFGESTURE_OT_load_bone_map, DIFFGESTURE_OT_create_environment, DIFFGESTURE_OT_cancel_environment,
           DIFFGESTURE_OT_use_extension_environment, DIFFGESTURE_OT_check_environment)
