"""How to sample, for every front end (CLI, worker, panel, headless): the settings, the table of the options that
set them, the presets.

Stdlib only, so the add-on validates settings before it starts a worker and the CLI parses them without torch.
A preset is a name for a set of values: "paper" is the same settings wherever it is chosen. The options table
(OPTIONS) is the one definition of what each front end offers: the command lines' arguments (add_arguments) and
the panel's properties are built from it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

SAMPLERS = ("fast", "paper")  # the sampler family (a preset also sets BatchNorm, trimming and precision)
BN_MODES = ("eval", "official")
PRECISIONS = ("auto", "exact", "fp32", "bf16")
SOLVERS = ("ddim", "dpm")  # the fast sampler's update: DDIM (eta sets its noise) or DPM-Solver++(2M), deterministic
# Where the model runs: name -> (label, description) for the preferences' menu.
DEVICES: dict[str, tuple[str, str]] = {"auto": ("Auto", "CUDA when available, else the CPU"),
                                       "cuda": ("CUDA", "NVIDIA GPU"), "cpu": ("CPU", "Processor")}
# The fast sampler's defaults (MODEL_CARD.md, "Fewer steps"): on the demo model K = 12 quadratic steps are the fewest
# that keep both arms' gestures as wide as the targets ask (K = 10 left one arm narrow) while resting as still, and
# guidance 1, the conditional model alone (one network pass a step, not two), measured the same as the official 1.15.
DEFAULT_FAST_STEPS = 12
FAST_GUIDANCE = 1.0
OFFICIAL_GUIDANCE = 1.15  # the official classifier-free guidance scale: the paper preset's
# The checkpoint a request names as "default": the demo checkpoint bundled inside model_core.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "demo_ted_gesture.pt"


def resolve_checkpoint(name: str) -> Path:
    """A checkpoint setting as a path: "" or "default" mean the bundled one."""
    return DEFAULT_CHECKPOINT if name in ("", "default") else Path(name)


@dataclass
class GenerationSettings:
    """How to sample. The defaults are the "fast" preset; `preset("paper")` gives the paper's settings."""

    sampler: str = "fast"  # "paper" (500 steps, official) or "fast" (K steps of a solver)
    steps: int = DEFAULT_FAST_STEPS  # fast sampler only
    guidance: float = FAST_GUIDANCE  # 1: the conditional model alone, without the unconditional pass
    stabilizer: bool = True
    eta: float = 1.0  # fast sampler noise: 1 = ancestral (DDPM-like) steps, 0 = deterministic DDIM
    solver: str = "ddim"  # fast sampler only: one of SOLVERS
    seed: int = 0
    variations: int = 1
    bn_mode: str = "eval"  # "eval": running statistics; "official": batch statistics as the official scripts
    fade_out: bool = False
    trim: bool = True  # cut the output to the audio's duration (the official code keeps whole windows)
    # "exact": eager float32, bit-identical to the official code on the same CPU; "fp32": float32 with the
    # Linear weights packed by MKL on the CPU (~1e-6 from exact); "bf16": bf16 autocast; "auto": the fastest of
    # these on this CPU, measured once and cached (precision.py); fp32 on GPUs.
    precision: str = "auto"
    # gesture amplitude about the mean pose, in the normalised direction space (directions renormalised after):
    # 0 = the mean (rest) pose, 1 = as sampled, 2 = twice as far from it
    intensity: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming the first setting of the wrong type or outside its range."""
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        for name in ("stabilizer", "fade_out", "trim"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            integer = isinstance(lo, int)
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ValueError(f"{name} must be {'a whole' if integer else 'a'} number, not {value!r}")
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{name} must be within {lo}..{hi}, not {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GenerationSettings":
        """Validated settings from plain values (a request's "settings" field); unknown names are refused."""
        if not isinstance(values, dict):
            raise ValueError(f"settings must be an object of named values, not {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown settings {', '.join(map(repr, unknown))}")
        settings = cls(**values)
        settings.validate()
        return settings


# Preset name -> the values that differ from the defaults. "paper" reproduces the official sampling: its 500-step
# sampler, guidance 1.15, BatchNorm with batch statistics, whole windows (no trim) and bit-exact float32.
PRESETS: dict[str, dict] = {
    "fast": {"sampler": "fast"},
    "paper": {"sampler": "paper", "guidance": OFFICIAL_GUIDANCE, "bn_mode": "official", "trim": False,
              "precision": "exact"},
}


def preset(name: str, **overrides) -> GenerationSettings:
    """The named preset with some values changed, validated; an override of None keeps the preset's value."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose {' or '.join(PRESETS)}")
    settings = GenerationSettings(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
    settings.validate()
    return settings


# How the panel shows each preset: name -> (label, description).
PRESET_LABELS: dict[str, tuple[str, str]] = {
    "fast": ("Fast", f"DDIM sampler with {DEFAULT_FAST_STEPS} steps (seconds)"),
    "paper": ("Paper", "The paper's sampling: its 500-step sampler, guidance 1.15, BatchNorm batch statistics, whole "
                       "windows, exact float32 (slow)"),
}


@dataclass(frozen=True)
class Option:
    """One generation option as every front end offers it: its setting's name, type, help, inclusive range (numbers)
    or choices (names). Its default is the fast preset's value (the GenerationSettings field's)."""
    name: str  # a GenerationSettings field, or "preset"
    kind: type  # int, float, str or bool
    help: str
    range: tuple[int, int] | tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    sampler: str | None = None  # the sampler family it applies to (None: both); the panel hides it for the other
    advanced: bool = False  # the panel shows it under Advanced
    title: str = ""  # the panel's name for it, where the field's name reads badly

    @property
    def default(self) -> object:
        return "fast" if self.name == "preset" else getattr(GenerationSettings(), self.name)

    @property
    def flags(self) -> tuple[str, ...]:
        """The command-line flags: --NAME; a true/false setting has --NAME and --no-NAME, so that either value can be
        asked for whatever the preset's is."""
        name = self.name.replace("_", "-")
        return (f"--{name}", f"--no-{name}") if self.kind is bool else (f"--{name}",)

    @property
    def flag(self) -> str:
        """The flag that changes the fast preset's value (a true/false setting's turns it to the other value)."""
        return self.flags[1 if self.kind is bool and self.default else 0]

    @property
    def label(self) -> str:
        """The panel's name for it."""
        return self.title or self.name.replace("_", " ").title()

    @property
    def preset_sets(self) -> bool:
        """Whether a preset sets it: the panel then takes the preset's value unless told to override it."""
        return any(self.name in values for values in PRESETS.values())


# The one table of generation options: the CLI, headless and the panel are built from it (RANGES and CHOICES, which
# validate() checks, too). Adding an option is a row here and a GenerationSettings field the model uses.
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("preset", str, "settings preset: fast, or paper = the official sampling (500 steps, guidance 1.15, "
                          "BatchNorm batch statistics, whole windows, exact float32); the options below change it",
           choices=tuple(PRESETS)),
    Option("steps", int, "denoising steps of the fast sampler", range=(1, 500), sampler="fast"),
    Option("solver", str, "fast sampler update: ddim = DDIM (eta sets its noise), dpm = DPM-Solver++(2M), "
                          "deterministic", choices=SOLVERS, sampler="fast", advanced=True),
    Option("eta", float, "DDIM's noise: 1 = ancestral (DDPM-like) steps, 0 = deterministic DDIM",
           range=(0.0, 1.0), sampler="fast", advanced=True),
    Option("seed", int, "random seed: the same seed and audio give the same motion", range=(0, 2 ** 63 - 1)),
    Option("guidance", float, "classifier-free guidance scale: higher follows the audio more closely; 1 = the "
                              "conditional model alone (half the work)", range=(0.0, 20.0)),
    Option("variations", int, "motions to generate from the audio, each from its own noise", range=(1, 64)),
    Option("intensity", float, "gesture amplitude about the rest (mean) pose: 0 = rest pose, 1 = as sampled, "
                               "2 = twice as wide", range=(0.0, 3.0)),
    Option("stabilizer", bool, "the gesture stabilizer: noise shared across frames in the last denoising steps, for "
                               "smoother motion (the paper's; keep it on)"),
    Option("bn_mode", str, "BatchNorm: eval = running statistics, official = batch statistics as the official "
                           "scripts", choices=BN_MODES, advanced=True, title="BatchNorm"),
    Option("fade_out", bool, "the official fade_out: ease into the mean pose over 8 frames from where the audio ends",
           advanced=True),
    Option("trim", bool, "cutting the output to the audio's duration (the official code keeps whole windows, "
                         "34 + 30 (K-1) frames)", advanced=True),
    Option("precision", str, "exact = bit-identical to the official code on the same CPU; fp32 = MKL-packed CPU "
                             "weights (~1e-6 from exact); bf16 = bf16 autocast; auto = the fastest of these on this "
                             "CPU, measured once and cached (fp32 on GPUs)", choices=PRECISIONS, advanced=True),
)}
# Inclusive ranges of the numeric settings and the names each named setting takes; validate() names the field and
# its range or choices when a value is outside.
RANGES: dict[str, tuple] = {o.name: o.range for o in OPTIONS.values() if o.range}
CHOICES: dict[str, tuple[str, ...]] = {"sampler": SAMPLERS, **{o.name: o.choices for o in OPTIONS.values()
                                                                if o.choices and o.name != "preset"}}


def _default_text(option: Option) -> str:
    """'default X', with the paper preset's value where it differs."""
    def shown(value) -> str:
        return ("on" if value else "off") if option.kind is bool else str(value)
    paper = PRESETS["paper"].get(option.name)
    return f"default {shown(option.default)}" + (f"; paper: {shown(paper)}" if paper is not None else "")


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] = tuple(OPTIONS), defaults: str | None = None,
                  required: bool = False) -> None:
    """Add the table's options `names` to a command line, each stored under its name, None when not given (the
    preset's value); the help gives the range and the default (or `defaults`: "the take's"). The preset is also
    accepted as --sampler, its name before it had its own; --reproduce comes with it."""
    for name in names:
        o = OPTIONS[name]
        span = f"; {o.range[0]}..{o.range[1]}" if o.range and o.range[1] < 2 ** 31 else ""
        default = f"default: {defaults}" if defaults else _default_text(o)
        if o.kind is bool:
            parser.add_argument(o.flags[0], dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"turn on (or off) {o.help} ({default})")
        elif name == "preset":
            parser.add_argument("--preset", "--sampler", dest=name, type=o.kind, default=o.default,
                                choices=o.choices, help=f"{o.help} ({default})")
        else:
            parser.add_argument(o.flag, dest=name, type=o.kind, choices=o.choices, required=required,
                                help=f"{o.help}{span}" + ("" if required else f" ({default})"))
    if "preset" in names:
        parser.add_argument("--reproduce", action="store_true",
                            help="the official sampling exactly, whatever else is given: --preset paper --bn-mode "
                                 "official --precision exact --no-trim")


def chosen(args: argparse.Namespace) -> tuple[str, dict]:
    """The preset and the setting values a parsed command line names (None: the preset's); --reproduce is the paper
    preset whatever the options say about the sampler, BatchNorm, precision and trimming."""
    values = {name: getattr(args, name, None) for name in OPTIONS if name != "preset"}
    if getattr(args, "reproduce", False):  # the official test script's sampling
        return "paper", {**values, **PRESETS["paper"]}
    return args.preset, values
