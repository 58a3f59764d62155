"""The panel's settings, stored on the scene (saved with the .blend)."""
import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import shared

INT_MAX = 2 ** 31 - 1  # Blender's integer properties are 32-bit
OPTIONS = shared.settings.OPTIONS
# The panel's property of an option, where its name differs: the preset's, as files saved before it had its own name
# know it.
PROPERTY = {"preset": "sampler"}
SHOWN = {"variations": {"soft_max": 16}, "intensity": {"soft_max": 2.0, "subtype": "FACTOR"}}  # how some are drawn


def property_name(name: str) -> str:
    """The panel's property that holds the option `name`."""
    return PROPERTY.get(name, name)


def override_name(name: str) -> str:
    """The switch that makes the panel's value of an option a preset sets win over the preset's."""
    return f"override_{name}"


def option(name: str, **shown):
    """The property of a generation option, built from the options table (OPTIONS): its label, description, default
    and range (up to INT_MAX) or choices; `shown`: how the panel draws it (soft limits)."""
    o = OPTIONS[name]
    text = {"name": o.label, "description": o.help[0].upper() + o.help[1:], **shown}
    if o.choices:
        labels = shared.settings.PRESET_LABELS if name == "preset" else {}
        return EnumProperty(items=[(c, *labels.get(c, (c, ""))) for c in o.choices], default=o.default, **text)
    if o.kind is bool:
        return BoolProperty(default=o.default, **text)
    low, high = o.range
    if o.kind is int:
        return IntProperty(default=o.default, min=low, max=min(high, INT_MAX), **text)
    return FloatProperty(default=o.default, min=low, max=high, **text)


def option_properties() -> dict[str, object]:
    """The panel's properties of every option of the table, with an override switch (off: the preset's value) for
    each one a preset sets."""
    properties = {}
    for name, o in OPTIONS.items():
        properties[property_name(name)] = option(name, **SHOWN.get(name, {}))
        if o.preset_sets:
            properties[override_name(name)] = BoolProperty(
                name=f"Override {o.label}", default=False,
                description="Use the value set here instead of the preset's (off: the preset's value)")
    return properties


def applies(props: bpy.types.PropertyGroup, name: str) -> bool:
    """Whether an option applies to the sampler of the panel's preset (steps, solver and eta: the fast one's)."""
    sampler = OPTIONS[name].sampler
    return sampler is None or sampler == shared.settings.PRESETS[props.sampler]["sampler"]


def chosen(props: bpy.types.PropertyGroup) -> tuple[str, dict]:
    """The panel's preset and the values of the other options (None: the preset's), as settings.chosen reads them
    from a command line: an option that does not apply to the preset's sampler, or one a preset sets whose override
    is off, is the preset's."""
    values = {}
    for name, o in OPTIONS.items():
        if name == "preset":
            continue
        value = getattr(props, property_name(name))
        if not applies(props, name) or (o.preset_sets and not getattr(props, override_name(name))):
            value = None
        elif o.kind is float:
            value = round(value, 6)  # a float32 property: 1.15 reads back as 1.1499999761
        values[name] = value
    return props.sampler, values


NO_STRIP = "NONE"  # the menu's only item while the sequencer has no sound strip (an empty name would be a heading)


def _sound_strips(self, context) -> list[tuple[str, str, str]]:
    """Sound strips of the scene's sequencer, for the audio source menu."""
    seq = context.scene.sequence_editor if context and context.scene else None
    strips = [s for s in seq.strips_all if s.type == "SOUND"] if seq is not None else []
    return [(s.name, s.name, f"Use the audio of strip {s.name}") for s in strips] or \
        [(NO_STRIP, "(no sound strips)", "Add a sound strip in the Video Sequencer first")]


class DiffGestureSettings(bpy.types.PropertyGroup):
    """Generation settings of one scene; the generation options' properties are added from the table below."""
    audio_source: EnumProperty(name="Audio", items=[("FILE", "File", "A speech audio file on disk"),
                                                    ("STRIP", "Sound Strip", "A sound strip in the sequencer")])
    audio_path: StringProperty(name="Audio File", subtype="FILE_PATH", description="Speech recording (WAV, FLAC, OGG)")
    audio_strip: EnumProperty(name="Strip", items=_sound_strips, description="Sound strip whose audio is used")
    armature: PointerProperty(name="Armature", type=bpy.types.Object, description="The rig to animate",
                              poll=lambda self, obj: obj.type == "ARMATURE")
    checkpoint_source: EnumProperty(name="Checkpoint", items=[
        ("DEFAULT", "Preferences", "The checkpoint chosen in the add-on preferences (bundled by default)"),
        ("FILE", "File", "A native or official DiffGesture checkpoint file")])
    checkpoint_path: StringProperty(name="Checkpoint File", subtype="FILE_PATH")
    start_frame: IntProperty(name="Start Frame", default=1, description="Frame where the speech starts")
    reroll_start: IntProperty(name="Re-roll From", default=1,
                              description="First frame to re-roll (the timeline's preview range is used when on)")
    reroll_end: IntProperty(name="To", default=48,
                            description="Last frame to re-roll (the timeline's preview range is used when on)")
    add_sound: BoolProperty(name="Add Sound Strip", default=True, description="Put the audio in the sequencer")
    pack_sound: BoolProperty(name="Pack Sound", default=False,
                             description="Store the audio inside the .blend, so the file carries it (bigger file). "
                                         "Off: the strip points at the audio file, by an absolute path unless it "
                                         "lies in the .blend's folder")
    drive_spine: BoolProperty(name="Spine/Head", default=True)
    drive_arms: BoolProperty(name="Arms", default=True)
    drive_fingers: BoolProperty(name="Fingers", default=True,
                                description="Drive the finger bones when the checkpoint and the rig have fingers")
    allow_partial: BoolProperty(name="Allow Partial Rig", default=False,
                                description="Animate only the mapped bones when required bones are unmapped")


DiffGestureSettings.__annotations__.update(option_properties())  # Blender registers the annotated properties
CLASSES = (DiffGestureSettings,)
