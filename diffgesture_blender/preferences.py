"""Add-on preferences: which Python holds torch, the default checkpoint and device; environment setup status."""
from __future__ import annotations

from dataclasses import dataclass

import bpy
from bpy.props import EnumProperty, StringProperty

from . import environment, shared
from .session import SESSION
from .worker_host import env_dir


@dataclass
class Settings:
    """The preferences as plain values for bpy-free code."""
    python: str
    checkpoint: str
    device: str


def _python_changed(self, context) -> None:
    """Another interpreter: the last Check described the old one."""
    SESSION.worker.forget_check()


class DiffGesturePreferences(bpy.types.AddonPreferences):
    """Where the torch worker runs and what it uses by default."""
    bl_idname = __package__

    torch_python: StringProperty(
        name="Torch Python", subtype="FILE_PATH", update=_python_changed,
        description="Interpreter of the environment that holds torch; empty: the extension's own environment")
    checkpoint: StringProperty(
        name="Default Checkpoint", subtype="FILE_PATH",
        description="Native or official checkpoint used by default; empty: the bundled checkpoint")
    device: EnumProperty(name="Device", items=[(name, label, description) for name, (label, description)
                                               in shared.settings.DEVICES.items()])

    def draw(self, context) -> None:
        """The preferences, with the environment's operators named by idname (operators/worker_setup.py imports
        this module)."""
        layout = self.layout
        layout.prop(self, "torch_python")
        if not self.torch_python:
            layout.label(text=environment.own_state(env_dir()), icon="INFO")
        elif environment.venv_python(env_dir()).is_file():  # both exist: say which one wins and offer the other
            row = layout.row()
            row.label(text="Torch Python is used (cleared, the extension's environment would be)", icon="INFO")
            row.operator("diffgesture.use_extension_environment")
        layout.prop(self, "checkpoint")
        layout.prop(self, "device")
        row = layout.row()
        row.operator("diffgesture.create_environment", icon="CONSOLE")
        row.operator("diffgesture.check_environment", icon="CHECKMARK")
        if SESSION.environment_builder is not None:
            self.draw_builder(layout.box(), SESSION.environment_builder)
        for line in SESSION.worker.check_report():
            layout.label(text=line)

    def draw_builder(self, box: bpy.types.UILayout, builder: environment.EnvironmentBuilder) -> None:
        """The running or finished Create Environment: plan, progress with pip's current line, Cancel, outcome."""
        box.label(text=builder.plan.reason)
        for note in builder.notes:
            box.label(text=note, icon="INFO")
        if not builder.done:
            box.progress(factor=builder.fraction, text=builder.status())
            if builder.last_line:
                box.label(text=builder.last_line[:160])
            box.operator("diffgesture.cancel_environment", icon="CANCEL")
        elif builder.error:
            box.label(text=builder.error, icon="ERROR")
        elif self.torch_python:
            box.label(text=f"The environment is ready, but Torch Python ({self.torch_python}) is set and is what "
                           "Check and Generate use", icon="INFO")
            box.operator("diffgesture.use_extension_environment")
        else:
            box.label(text="The environment is ready", icon="CHECKMARK")
        box.label(text=f"Log: {builder.log_path}")


def get(context: bpy.types.Context | None = None) -> Settings:
    """The current preferences (defaults when the add-on is not registered through the preferences)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    prefs = addon.preferences if addon is not None else None
    python = prefs.torch_python if prefs is not None else ""
    return Settings(python=bpy.path.abspath(python) if python else str(environment.venv_python(env_dir())),
                    checkpoint=prefs.checkpoint if prefs is not None and prefs.checkpoint else "default",
                    device=prefs.device if prefs is not None else "auto")


CLASSES = (DiffGesturePreferences,)
