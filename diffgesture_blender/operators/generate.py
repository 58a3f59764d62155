"""Generate: the panel's request run as a generation, modal with progress and Esc in the UI, blocking from scripts;
the machinery Re-roll Range shares (GenerationOperator, finish, fail)."""
from __future__ import annotations

from pathlib import Path

import bpy

from .. import generation, preferences, properties
from ..request import Request, UsageError, audio_from_strip, sampling
from ..session import SESSION

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
    name, values = properties.chosen(props)
    settings = sampling(name, **values)  # as headless: the preset with the options that change it
    parts = {p for p, on in (("spine", props.drive_spine), ("arms", props.drive_arms),
                             ("fingers", props.drive_fingers)) if on}
    checkpoint = chosen_checkpoint(context)
    return Request(audio=audio, armature=props.armature.name, python=prefs.python, checkpoint=checkpoint,
                   device=prefs.device, settings=settings, start_frame=start, add_sound=add_sound,
                   parts=frozenset(parts), allow_partial=props.allow_partial, pack_sound=props.pack_sound,
                   sound=sound)


def fail(op: bpy.types.Operator, kind: str, message: str) -> set[str]:
    """Report a Generate that changed nothing, and keep the message for the panel."""
    SESSION.last_failure = (kind, message)
    op.report({kind}, message)
    return {"CANCELLED"}


def chosen_checkpoint(context: bpy.types.Context) -> str:
    """The panel's checkpoint: its own file, or the preferences' default."""
    props = context.scene.diffgesture
    return props.checkpoint_path if props.checkpoint_source == "FILE" else preferences.get(context).checkpoint


def finish(op: bpy.types.Operator, context: bpy.types.Context, gen: generation.Generation) -> set[str]:
    """Report how a generation ended and, when it produced a result, write it into the scene."""
    try:
        summary = gen.conclude(context.scene)
    except generation.GenerationFailed as e:
        return fail(op, "INFO" if gen.was_cancelled() else "ERROR", str(e))
    finally:
        gen.close()
    SESSION.last_failure = None
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


CLASSES = (DIFFGESTURE_OT_generate,)
