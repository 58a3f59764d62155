"""How to sample, for every front end (CLI, worker, panel, headless): the settings, their ranges, the presets.

Stdlib only, so the add-on validates settings before it starts a worker and the CLI parses them without torch.
A preset is a name for a set of values: "paper" is the same settings wherever it is chosen.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SAMPLERS = ("fast", "paper")
BN_MODES = ("eval", "official")
PRECISIONS = ("auto", "exact", "fp32", "bf16")
# The fast sampler's update: DDIM (eta sets its noise), DPM-Solver++(2M) (deterministic) or "renoise" (each step's
# x_0 prediction noised afresh, samplers.RenoiseSampler; eta unused)
SOLVERS = ("ddim", "dpm", "renoise")
# The fast sampler's default number of steps (K = 25 matched K = 50 on the demo model).
DEFAULT_FAST_STEPS = 25
DEFAULT_GUIDANCE = 1.15  # the official classifier-free guidance scale
# Inclusive ranges of the numeric settings; validate() names the field and its range when a value is outside.
RANGES: dict[str, tuple[float, float]] = {"steps": (1, 500), "guidance": (0.0, 20.0), "eta": (0.0, 1.0),
                                          "intensity": (0.0, 3.0),
                                          "seed": (0, 2 ** 63 - 1), "variations": (1, 64)}
# The checkpoint a request names as "default": the demo checkpoint bundled inside model_core.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "demo_ted_gesture.pt"


def resolve_checkpoint(name: str) -> Path:
    """A checkpoint setting as a path: "" or "default" mean the bundled one."""
    return DEFAULT_CHECKPOINT if name in ("", "default") else Path(name)


@dataclass
class GenerationSettings:
    """How to sample. The defaults are the "fast" preset; `preset("paper")` gives the paper's settings."""

    sampler: str = "fast"  # "paper" (500 steps, official) or "fast" (DDIM)
    steps: int = DEFAULT_FAST_STEPS  # fast sampler only
    guidance: float = DEFAULT_GUIDANCE
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
        for name, choices in (("sampler", SAMPLERS), ("bn_mode", BN_MODES), ("precision", PRECISIONS),
                               ("solver", SOLVERS)):
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
# sampler, BatchNorm with batch statistics, whole windows (no trim) and bit-exact float32.
PRESETS: dict[str, dict] = {
    "fast": {"sampler": "fast"},
    "paper": {"sampler": "paper", "bn_mode": "official", "trim": False, "precision": "exact"},
}


def preset(name: str, **overrides) -> GenerationSettings:
    """The named preset with some values changed, validated; an override of None keeps the preset's value."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose {' or '.join(PRESETS)}")
    settings = GenerationSettings(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
    settings.validate()
    return settings
