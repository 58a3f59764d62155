"""The panel's settings, stored on the scene (saved with the .blend)."""
import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import shared

DEFAULTS, RANGES = shared.settings.GenerationSettings(), shared.settings.RANGES


NO_STRIP = "NONE"  # the menu's only item while the sequencer has no sound strip (an empty name would be a heading)


def _sound_strips(self, context) -> list[tuple[str, str, str]]:
    """Sound strips of the scene's sequencer, for the audio source menu."""
    seq = context.scene.sequence_editor if context and context.scene else None
    strips = [s for s in seq.strips_all if s.type == "SOUND"] if seq is not None else []
    return [(s.name, s.name, f"Use the audio of strip {s.name}") for s in strips] or \
        [(NO_STRIP, "(no sound strips)", "Add a sound strip in the Video Sequencer first")]


class DiffGestureSettings(bpy.types.PropertyGroup):
    """Generation settings of one scene."""
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
    sampler: EnumProperty(name="Quality", items=[
        ("fast", "Fast", "DDIM sampler with a few dozen steps (seconds)"),
        ("paper", "Paper", "The paper's sampling: its 500-step sampler, BatchNorm batch statistics, whole windows, "
                           "exact float32 (slow; the same as --sampler paper)")])
    steps: IntProperty(name="Steps", default=DEFAULTS.steps, min=RANGES["steps"][0], max=RANGES["steps"][1],
                       description="Denoising steps of the fast sampler")
    seed: IntProperty(name="Seed", default=DEFAULTS.seed, min=RANGES["seed"][0],
                      description="Same seed, same audio: same motion")
    variations: IntProperty(name="Variations", default=DEFAULTS.variations, min=RANGES["variations"][0],
                            max=RANGES["variations"][1], soft_max=16,
                            description="Motions to generate; each becomes an action, the first is assigned")
    guidance: FloatProperty(name="Guidance", default=DEFAULTS.guidance, min=RANGES["guidance"][0],
                            max=RANGES["guidance"][1],
                            description="Classifier-free guidance scale: higher follows the audio more closely")
    intensity: FloatProperty(name="Intensity", default=DEFAULTS.intensity, min=RANGES["intensity"][0],
                             max=RANGES["intensity"][1], soft_max=2.0, subtype="FACTOR",
                             description="Gesture amplitude about the rest (mean) pose: 0 = rest pose, 1 = as "
                                         "sampled, 2 = twice as wide")
    stabilizer: BoolProperty(name="Stabilizer", default=DEFAULTS.stabilizer,
                             description="Gesture stabilizer: noise shared across frames in the last denoising "
                                         "steps, for smoother motion (the paper's; keep it on)")
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


CLASSES = (DiffGestureSettings,)
