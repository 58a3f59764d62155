"""Add-on preferences: which Python holds torch, the default checkpoint and device; environment setup status."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from . import core, environment


def env_dir() -> Path:
    """The extension's own torch environment folder (in its user directory, kept across updates)."""
    try:
        return Path(bpy.utils.extension_path_user(__package__, path="torch-env", create=True))
    except ValueError:  # loaded as a plain add-on from a source checkout, not as an extension
        return Path(bpy.utils.user_resource("SCRIPTS", path="diffgesture")) / "torch-env"


@dataclass
class Settings:
    """The preferences as plain values for bpy-free code."""
    python: str
    checkpoint: str
    device: str


def _python_changed(self, context) -> None:
    """Another interpreter: the last Check described the old one."""
    from .worker_host import HOST
    HOST.forget_check()


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
                                               in core.settings.DEVICES.items()])

    def draw(self, context) -> None:
        from . import operators
        from .worker_host import HOST
        layout = self.layout
        layout.prop(self, "torch_python")
        if not self.torch_python:
            layout.label(text=environment.own_state(env_dir()), icon="INFO")
        elif environment.venv_python(env_dir()).is_file():  # both exist: say which one wins and offer the other
            row = layout.row()
            row.label(text="Torch Python is used (cleared, the extension's environment would be)", icon="INFO")
            row.operator(operators.DIFFGESTURE_OT_use_extension_environment.bl_idname)
        layout.prop(self, "checkpoint")
        layout.prop(self, "device")
        row = layout.row()
        row.operator(operators.DIFFGESTURE_OT_create_environment.bl_idname, icon="CONSOLE")
        row.operator(operators.DIFFGESTURE_OT_check_environment.bl_idname, icon="CHECKMARK")
        builder = operators.DIFFGESTURE_OT_create_environment.builder
        if builder is not None:
            self.draw_builder(layout.box(), builder)
        for line in HOST.check_report():
            layout.label(text=line)

    def draw_builder(self, box: bpy.types.UILayout, builder: environment.EnvironmentBuilder) -> None:
        """The running or finished Create Environment: plan, progress with pip's current line, Cancel, outcome."""
        from . import operators
        box.label(text=builder.plan.reason)
        for note in builder.notes:
            box.label(text=note, icon="INFO")
        if not builder.done:
            box.progress(factor=builder.fraction, text=builder.status())
            if builder.last_line:
                box.label(text=builder.last_line[:160])
            box.operator(operators.DIFFGESTURE_OT_cancel_environment.bl_idname, icon="CANCEL")
        elif builder.error:
            box.label(text=builder.error, icon="ERROR")
        elif self.torch_python:
            box.label(text=f"The environment is ready, but Torch Python ({self.torch_python}) is set and is what "
                           "Check and Generate use", icon="INFO")
            box.operator(operators.DIFFGESTURE_OT_use_extension_environment.bl_idname)
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
