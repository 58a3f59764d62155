"""The worker's environment, from the preferences: Create Environment (and Cancel), use the extension's own
environment, Check the worker."""
from __future__ import annotations

import bpy

from .. import environment, generation, preferences
from ..session import SESSION
from ..worker_host import env_dir
from .generate import redraw


class DIFFGESTURE_OT_create_environment(bpy.types.Operator):
    """Create a Python environment with PyTorch for the worker (downloads about 0.2-3 GB; runs in the background)"""
    bl_idname = "diffgesture.create_environment"
    bl_label = "Create Environment"

    def execute(self, context):
        running = SESSION.environment_builder
        if running is not None and not running.done:
            self.report({"ERROR"}, "The environment is already being created: wait for it, or press Cancel")
            return {"CANCELLED"}
        if generation.active() is not None:
            self.report({"ERROR"}, "Wait for the running generation to end")
            return {"CANCELLED"}
        plan = environment.pip_plan(environment.gpu_info())
        # what Check said before describes the old environment: forgotten now and when the new one is done
        builder = environment.EnvironmentBuilder(env_dir(), plan, on_done=SESSION.worker.forget_check)
        try:
            builder.start()
        except environment.InstallerBusy as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        SESSION.worker.shutdown()  # it may run from the environment being replaced
        SESSION.worker.forget_check()
        SESSION.environment_builder = builder
        custom = preferences.get(context).python != str(environment.venv_python(env_dir()))
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
        builder = SESSION.environment_builder
        return builder is not None and not builder.done

    def execute(self, context):
        SESSION.environment_builder.cancel()
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
        SESSION.worker.check(preferences.get(context).python)

        def tick() -> float | None:
            redraw(bpy.context)
            return 0.5 if SESSION.worker.check_running() else None
        bpy.app.timers.register(tick, first_interval=0.5)
        return {"FINISHED"}


CLASSES = (DIFFGESTURE_OT_create_environment, DIFFGESTURE_OT_cancel_environment,
           DIFFGESTURE_OT_use_extension_environment, DIFFGESTURE_OT_check_environment)
