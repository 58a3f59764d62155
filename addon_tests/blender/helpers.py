"""Helpers shared by the add-on suites: rigs, a snapshot of what a generation may change, the modal loop."""
import os
import signal
import sys
import time

import bpy
from bpy_extras import anim_utils

from addon_tests.blender import rig_families as rigs

MODULE = "bl_ext.user_default.diffgesture"
STEPS = 8  # few denoising steps: the tests check plumbing, not quality


class TorchImportWatch:
    """A meta-path finder that records every attempt to import torch in this process and then lets the normal
    finders decide. torch is not installed in the Blender environments, so `"torch" not in sys.modules` alone
    would hold even if the add-on tried (say inside a try/except ImportError); `attempts` catches that."""

    attempts: list[str] = []

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            cls.attempts.append(name)
        return None


sys.meta_path.insert(0, TorchImportWatch)


def never_touched_torch() -> bool:
    """Nothing in this Blender process has imported, or tried to import, torch."""
    return "torch" not in sys.modules and not TorchImportWatch.attempts


def make_rig(name: str, addon, family: str | None = "mixamo", **options) -> bpy.types.Object:
    """A rig of a known family as its files arrive (auto-detected mapping), or a lone bone nothing maps to."""
    if family is not None:
        return rigs.build_family(family, name, **options)
    arm = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, arm)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    arm.edit_bones.new("prop_handle").tail = (0, 0, 0.2)
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def action_keys(action: bpy.types.Action) -> list[tuple]:
    """Every keyframe of an action, over all its slots: (data path, index, ((frame, value), ...))."""
    keys = []
    for slot in action.slots:
        bag = anim_utils.action_get_channelbag_for_slot(action, slot)
        for fc in (bag.fcurves if bag else []):
            keys.append((fc.data_path, fc.array_index, tuple(tuple(k.co) for k in fc.keyframe_points)))
    return sorted(keys)


def snapshot() -> dict:
    """What a generation may change: objects, actions with every keyframe and fake user, NLA strips, sound strips,
    the frame range."""
    sc = bpy.context.scene
    strips = [(s.name, s.channel, s.frame_start) for s in sc.sequence_editor.strips_all] \
        if sc.sequence_editor else None
    assigned = {o.name: o.animation_data.action.name if o.animation_data and o.animation_data.action else None
                for o in bpy.data.objects}
    nla = {o.name: [(t.name, [(s.name, s.frame_start) for s in t.strips]) for t in o.animation_data.nla_tracks]
           for o in bpy.data.objects if o.animation_data}
    return {"objects": sorted(o.name for o in bpy.data.objects),
            "actions": {a.name: (action_keys(a), a.use_fake_user) for a in bpy.data.actions}, "strips": strips,
            "assigned": assigned, "nla": nla, "range": (sc.frame_start, sc.frame_end)}


def keyframe_span(obj: bpy.types.Object) -> tuple[float, float]:
    ad = obj.animation_data
    bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
    frames = [k.co.x for fc in bag.fcurves for k in fc.keyframe_points]
    return min(frames), max(frames)


def forearm_spread(obj, action, bone: str, frames: range) -> float:
    """Mean angle (degrees) between the bone's world direction at each frame and its mean direction."""
    import numpy as np
    obj.animation_data.action = action
    dirs = []
    for f in frames:
        bpy.context.scene.frame_set(f)
        pb = obj.pose.bones[bone]
        d = (obj.matrix_world @ pb.tail) - (obj.matrix_world @ pb.head)
        dirs.append(np.array(d.normalized()))
    dirs = np.array(dirs)
    mean = dirs.mean(axis=0)
    mean /= np.linalg.norm(mean)
    return float(np.degrees(np.arccos(np.clip(dirs @ mean, -1, 1))).mean())


class Layout:
    """Accepts whatever a draw function calls, so panels can be drawn in background mode; records label and
    progress texts, properties' given texts and, as "<idname>", the operators' buttons in `texts`, and the names of
    the properties drawn in `props` (of this layout and of every row, box, column and section, drawn open)."""

    def __init__(self, texts: list[str] | None = None, props: list[str] | None = None):
        self.texts = [] if texts is None else texts
        self.props = [] if props is None else props

    def label(self, text: str = "", **kw) -> "Layout":
        self.texts.append(text)
        return self

    def progress(self, text: str = "", **kw) -> None:
        self.texts.append(text)

    def prop(self, data, name: str, text: str | None = None, **kw) -> None:
        self.props.append(name)
        if text is not None:  # a property drawn under its own name is not recorded in texts
            self.texts.append(text)

    def operator(self, idname: str, **kw) -> "Layout":
        self.texts.append(f"<{idname}>")
        return Layout([])

    def panel(self, idname: str, **kw) -> tuple["Layout", "Layout"]:
        """A collapsible section's header and body, open."""
        return Layout(self.texts, self.props), Layout(self.texts, self.props)

    def __getattr__(self, name):
        return lambda *args, **kw: Layout(self.texts, self.props)


def draw_panel(addon) -> list[str]:
    """The texts the sidebar panel draws for the current scene."""
    cls = addon.panel.DIFFGESTURE_PT_generate
    panel = type("P", (), {"layout": Layout(), "draw_mapping": cls.draw_mapping, "draw_take": cls.draw_take})()
    cls.draw(panel, bpy.context)
    return panel.layout.texts


def draw_preferences(addon, torch_python: str | None = None) -> list[str]:
    """The texts the add-on's preferences draw (with Torch Python replaced when given)."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    cls = addon.preferences.DiffGesturePreferences
    fields = {k: getattr(prefs, k) for k in ("torch_python", "checkpoint", "device")}
    if torch_python is not None:
        fields["torch_python"] = torch_python
    layout = Layout()
    cls.draw(type("P", (), {"layout": layout, "draw_builder": cls.draw_builder, **fields})(), bpy.context)
    return layout.texts


class ReportSink:
    """Stands in for an operator instance: collects its reports as (kind, message)."""

    def __init__(self):
        self.reports: list[tuple[str, str]] = []

    def report(self, kind: set[str], msg: str) -> None:
        self.reports.append((next(iter(kind)), msg))


def drive_modal(addon, cancel_after_progress: bool = False, kill_after_progress: bool = False,
                timeout: float = 120.0):
    """Run Generate the way its modal handler does: create, begin in a thread, poll on a 'timer', finish."""
    gen = addon.generation.Generation.create(addon.operators.generate.gather(bpy.context))
    gen.begin()
    deadline = time.monotonic() + timeout
    while not gen.poll():
        assert time.monotonic() < deadline, "generation did not end"
        if gen.job is not None and gen.job.progress:
            if cancel_after_progress:
                gen.cancel()
            if kill_after_progress:
                os.kill(addon.session.SESSION.worker.pid(), signal.SIGKILL)
        time.sleep(addon.operators.generate.TIMER_INTERVAL)
    sink = ReportSink()
    return addon.operators.generate.finish(sink, bpy.context, gen), sink.reports
