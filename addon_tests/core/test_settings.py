"""The settings module: every field checked with a message that names it, the presets, the options table, the CLI's
reading of them."""
import dataclasses
import math

import pytest

from model_core.__main__ import build_parser, generation_settings
from model_core.settings import (CHOICES, FAST_GUIDANCE, OFFICIAL_GUIDANCE, OPTIONS, PRESETS, RANGES,
                                 GenerationSettings, preset)


@pytest.mark.parametrize("field, value, message", [
    ("sampler", "euler", "sampler must be one of fast, paper, not 'euler'"),
    ("bn_mode", "train", "bn_mode must be one of eval, official"),
    ("precision", "int8", "precision must be one of auto, exact, fp32, bf16"),
    ("solver", "euler", "solver must be one of ddim, dpm, not 'euler'"),
    ("steps", 0, r"steps must be within 1\.\.500, not 0"),
    ("steps", 501, r"steps must be within 1\.\.500"),
    ("steps", 2.5, "steps must be a whole number, not 2.5"),
    ("steps", True, "steps must be a whole number, not True"),
    ("seed", -1, r"seed must be within 0\.\."),
    ("seed", "7", "seed must be a whole number, not '7'"),
    ("variations", 0, r"variations must be within 1\.\.64"),
    ("variations", 65, r"variations must be within 1\.\.64"),
    ("guidance", math.nan, r"guidance must be within 0\.0\.\.20\.0, not nan"),
    ("guidance", math.inf, "guidance must be within"),
    ("guidance", -0.5, "guidance must be within"),
    ("eta", 1.5, r"eta must be within 0\.0\.\.1\.0"),
    ("eta", -math.inf, "eta must be within"),
    ("stabilizer", 1, "stabilizer must be true or false"),
    ("trim", "no", "trim must be true or false"),
])
def test_every_field_is_checked_and_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{field: value}).validate()
    with pytest.raises(ValueError, match=message):
        preset("paper", **{field: value})


def test_defaults_are_the_fast_preset_and_valid():
    GenerationSettings().validate()
    assert preset("fast") == GenerationSettings() and GenerationSettings().guidance == FAST_GUIDANCE == 1.0


def test_paper_preset_is_the_official_sampling():
    paper = preset("paper")
    assert (paper.sampler, paper.bn_mode, paper.trim, paper.precision) == ("paper", "official", False, "exact")
    assert paper.guidance == OFFICIAL_GUIDANCE == 1.15, "the official classifier-free guidance scale"
    assert preset("paper", seed=4, guidance=None).seed == 4, "None keeps the preset's value"
    assert preset("paper", seed=4).guidance == OFFICIAL_GUIDANCE and preset("paper", guidance=1.0).guidance == 1.0
    with pytest.raises(ValueError, match="unknown preset 'slow': choose fast or paper"):
        preset("slow")


def test_from_dict_refuses_unknown_names_and_bad_values():
    assert GenerationSettings.from_dict(preset("paper").to_dict()) == preset("paper")
    with pytest.raises(ValueError, match="unknown settings 'stpes'"):
        GenerationSettings.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="variations must be within"):
        GenerationSettings.from_dict({"variations": 100})
    with pytest.raises(ValueError, match="settings must be an object"):
        GenerationSettings.from_dict([1, 2])


def test_cli_sampler_is_the_preset_and_options_change_it():
    def cli(*options):
        return generation_settings(build_parser().parse_args(["generate", "a.wav", "-o", "b.npz", *options]))
    assert set(PRESETS) == {"fast", "paper"}
    assert cli() == preset("fast") and cli("--sampler", "paper") == cli("--preset", "paper") == preset("paper")
    assert cli("--sampler", "paper", "--precision", "fp32", "--seed", "3") == preset("paper", precision="fp32", seed=3)
    assert cli("--no-stabilizer", "--fade-out", "--steps", "7") == preset("fast", stabilizer=False, fade_out=True,
                                                                          steps=7)
    assert cli("--no-trim") == preset("fast", trim=False)
    assert cli("--preset", "paper", "--trim", "--stabilizer") == preset("paper", trim=True), \
        "either value of a true/false option, whatever the preset's is"
    assert cli("--fade-out", "--no-fade-out") == preset("fast"), "the last of a flag and its opposite counts"
    assert cli("--solver", "ddim", "--eta", "0") == preset("fast", solver="ddim", eta=0.0)
    assert cli("--solver", "dpm", "--steps", "8") == preset("fast", solver="dpm", steps=8)
    assert cli("--reproduce", "--precision", "fp32", "--seed", "2") == preset("paper", seed=2), \
        "--reproduce is the paper preset whatever precision is asked for"
    with pytest.raises(ValueError, match="guidance must be within"):
        cli("--guidance", "nan")


def test_the_options_table_is_the_settings():
    """Every option but the preset is a GenerationSettings field of the option's type with the field's default, valid
    and inside its range or choices, which validate() checks; the only field without an option is the sampler
    family, which the preset sets."""
    fields = {f.name: f for f in dataclasses.fields(GenerationSettings)}
    assert set(fields) - set(OPTIONS) == {"sampler"} and set(OPTIONS) - set(fields) == {"preset"}
    assert OPTIONS["preset"].choices == tuple(PRESETS) and OPTIONS["preset"].default == "fast"
    for name, o in OPTIONS.items():
        if name == "preset":
            continue
        assert fields[name].type == o.kind.__name__ and o.default == fields[name].default, name
        assert (o.range is not None) == (o.kind in (int, float)) and (o.choices is not None) == (o.kind is str), name
        if o.range:
            assert RANGES[name] == o.range and o.range[0] <= o.default <= o.range[1]
        if o.choices:
            assert CHOICES[name] == o.choices and o.default in o.choices
    assert [OPTIONS[n].flag for n in ("stabilizer", "fade_out", "trim", "bn_mode")] == \
        ["--no-stabilizer", "--fade-out", "--no-trim", "--bn-mode"]
    assert OPTIONS["trim"].flags == ("--trim", "--no-trim") and OPTIONS["bn_mode"].flags == ("--bn-mode",)


def test_cli_reroll_takes_the_tables_options_with_the_takes_defaults():
    args = build_parser().parse_args(["reroll", "r.npz", "--range", "1", "9", "-o", "x.npz", "--intensity", "2"])
    assert (args.intensity, args.seed, args.steps, args.guidance) == (2.0, None, None, None)
    assert "default: the take's" in build_parser()._subparsers._group_actions[0].choices["reroll"].format_help()
