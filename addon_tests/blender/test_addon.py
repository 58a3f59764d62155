"""The extension in real Blender (bpy 4.5): built, validated, installed, generating through a real torch worker.

The worker runs in the separate torch environment (DIFFGESTURE_TORCH_PYTHON) with a converted official fixture
checkpoint. In background mode modal timers never tick, so the Generate operator is exercised two ways: its
blocking `execute` through bpy.ops, and the exact poll loop its `modal` runs (Generation.poll until done, then
operators.generate.finish) driven by the test. Failures must leave the .blend unchanged: compared by `snapshot`.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import bpy
import pytest

from addon_tests.blender.helpers import (MODULE, STEPS, Layout, TorchImportWatch, action_keys, draw_panel,
                                         draw_preferences, drive_modal, forearm_spread, keyframe_span, make_rig,
                                         never_touched_torch, snapshot)
from addon_tests.paths import ROOT, TORCH_PYTHON


def test_package_installs_enables_and_never_imports_torch(addon):
    assert hasattr(bpy.types.Scene, "diffgesture") and hasattr(bpy.ops.diffgesture, "generate")
    assert addon.shared.settings.DEFAULT_CHECKPOINT.parent.name == "weights"
    assert never_touched_torch(), TorchImportWatch.attempts


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_generate_operator_keys_audio_span_and_adds_sound(addon, scene, speech_wav):
    scene.frame_end = 20  # shorter than the clip: Generate widens it
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    rig, seconds = scene.diffgesture.armature, wav_seconds(speech_wav)
    assert rig.animation_data.action.name == speech_wav.stem
    first, last = keyframe_span(rig)
    assert first == 11 and abs(last - (11 + seconds * 24)) <= 24 / 15 + 1  # spans the audio at 24 fps
    strips = list(scene.sequence_editor.strips_all)
    assert [(s.type, s.frame_start) for s in strips] == [("SOUND", 11)]
    # the range ends with the keys or the sound as Blender plays it (its strip rounds seconds * 24 frames)
    assert scene.frame_end == max(last, strips[0].frame_final_end - 1) >= 11 + round(seconds * 24) - 1
    assert never_touched_torch(), TorchImportWatch.attempts


def test_modal_loop_keeps_the_worker_warm_and_refuses_a_second_run(addon, scene):
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    pid = addon.session.SESSION.worker.pid()
    gen = addon.generation.Generation.create(addon.operators.generate.gather(bpy.context))
    try:
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.diffgesture.generate()
    finally:
        gen.close()
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"}, reports
    first, last = keyframe_span(scene.diffgesture.armature)  # the report names the keys' frames, not the sound's
    assert re.search(rf": frames {first:.0f}-{last:.0f} on Rig \(", reports[-1][1]) and first == 11, reports
    assert addon.session.SESSION.worker.pid() == pid  # same process served both requests
    assert len(bpy.data.actions) == 2


def test_headless_command_file_and_folder(addon, scene, speech_wav, small_checkpoint, tmp_path):
    rig = scene.diffgesture.armature.name
    out, summary_path = tmp_path / "out.blend", tmp_path / "summary.json"
    common = ["--armature", rig, "--checkpoint", str(small_checkpoint), "--steps", str(STEPS),
              "--torch-python", str(TORCH_PYTHON)]
    code = addon.headless.main(["generate", "--audio", str(speech_wav), "--start-frame", "5", "--output", str(out),
                                "--json", str(summary_path), *common])
    summary = json.loads(summary_path.read_text())
    assert code == 0 and summary["ok"] and out.is_file(), summary
    assert summary["results"][0]["frame_start"] == 5 and summary["results"][0]["actions"] == [speech_wav.stem]

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        (folder / name).write_bytes(speech_wav.read_bytes())
    assert addon.headless.main(["generate", "--audio", str(folder), "--no-sound", *common]) == 0
    assert {"a", "b"} <= {a.name for a in bpy.data.actions}
    assert addon.headless.main(["generate", "--audio", str(tmp_path / "missing.wav"), *common]) == 2
    assert addon.headless.main(["generate", "--bogus"]) == 2
    assert never_touched_torch(), TorchImportWatch.attempts

    bpy.ops.wm.open_mainfile(filepath=str(out))  # the saved file holds the motion and its sound
    assert bpy.data.objects[rig].animation_data.action.name == speech_wav.stem
    assert [s.frame_start for s in bpy.context.scene.sequence_editor.strips_all] == [5]


def test_headless_bone_map_files_and_clean_json_on_stdout(addon, scene, speech_wav, small_checkpoint, tmp_path,
                                                         capfd):
    """--save-bone-map writes the map in use, --bone-map applies one (a bad file is a usage error that changes
    nothing), and with --json - stdout holds the JSON summary alone even though the .blend is saved."""
    rig = scene.diffgesture.armature
    saved, out = tmp_path / "map.json", tmp_path / "out.blend"
    common = ["generate", "--audio", str(speech_wav), "--armature", rig.name, "--checkpoint", str(small_checkpoint),
              "--steps", str(STEPS), "--torch-python", str(TORCH_PYTHON), "--no-sound"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "diffgesture-bone-map", "version": 1, "bones": {"tail": "x"}}')
    before = snapshot()
    capfd.readouterr()
    assert addon.headless.main([*common, "--bone-map", str(bad)]) == 2
    assert "unknown roles ['tail']" in capfd.readouterr().err and snapshot() == before

    assert addon.headless.main([*common, "--save-bone-map", str(saved), "--output", str(out), "--json", "-"]) == 0
    captured = capfd.readouterr()
    summary = json.loads(captured.out)  # nothing but the summary on stdout
    assert summary["ok"] and summary["output"] == str(out.resolve()) and "Saved" not in captured.out
    doc = json.loads(saved.read_text())
    assert doc["format"] == "diffgesture-bone-map" and doc["bones"]["left_forearm"] == "mixamorig:LeftForeArm"
    del doc["bones"]["head"], doc["bones"]["neck"]  # a map unlike the detected one: the file is what is used
    saved.write_text(json.dumps(doc))
    assert addon.headless.main([*common, "--bone-map", str(saved), "--allow-partial"]) == 0
    keyed = {p.split('"')[1] for p, _, _ in action_keys(rig.animation_data.action)}
    assert "mixamorig:LeftForeArm" in keyed and "mixamorig:Head" not in keyed and "mixamorig:Neck" not in keyed


def test_audio_from_an_existing_sound_strip(addon, scene, speech_wav):
    strip = scene.sequence_editor_create().strips.new_sound("line", str(speech_wav), 2, 30)
    props = scene.diffgesture
    props.audio_source, props.audio_strip = "STRIP", strip.name
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    assert keyframe_span(props.armature)[0] == 30
    assert [s.name for s in scene.sequence_editor.strips_all] == ["line"]  # no second copy of the audio


def test_audio_from_a_packed_sound_strip_whose_file_is_gone(addon, scene, speech_wav, tmp_path):
    """The worker reads the packed copy; the take records the strip's file and sound (a re-roll finds it again)."""
    audio = tmp_path / "line.wav"
    audio.write_bytes(speech_wav.read_bytes())
    strip = scene.sequence_editor_create().strips.new_sound("line", str(audio), 2, 30)
    strip.sound.pack()
    audio.unlink()
    props = scene.diffgesture
    props.audio_source, props.audio_strip = "STRIP", strip.name
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    take = addon.takes.read(props.armature.animation_data.action)
    assert take.audio == str(audio.resolve()) and take.sound == strip.sound.name


def test_panel_and_preferences_draw(addon, scene):
    ctx = bpy.context
    panel_class = addon.panel.DIFFGESTURE_PT_generate
    rig, drawn = scene.diffgesture.armature, {}
    for obj in (rig, make_rig("Prop", addon, family=None)):
        scene.diffgesture.armature = obj
        panel = type("P", (), {"layout": Layout(), "draw_mapping": panel_class.draw_mapping})()
        panel_class.draw(panel, ctx)
        drawn[obj.name] = panel.layout.texts
    assert any(t.startswith("Bones: mixamo (") for t in drawn[rig.name]), drawn[rig.name]
    assert not any(t.startswith("no bone is mapped") for t in drawn[rig.name])
    assert any(t.startswith("Bones: custom (0/") for t in drawn["Prop"]), drawn["Prop"]
    problems = [t for t in drawn["Prop"] if t.startswith("no bone is mapped")]  # one line, not one per role
    assert len(problems) == 1 and "needed at least: spine" in problems[0] and "left_forearm" in drawn["Prop"]
    prefs = ctx.preferences.addons[MODULE].preferences
    assert "No environment yet: press Create Environment" in draw_preferences(addon, "")  # none was created here
    assert addon.preferences.get(ctx).python == prefs.torch_python == str(TORCH_PYTHON)


def test_paper_means_the_same_in_the_panel_cli_and_headless(addon, scene, speech_wav, tmp_path):
    from model_core.__main__ import build_parser, generation_settings
    settings = addon.shared.settings
    paper = settings.preset("paper")
    assert (paper.sampler, paper.bn_mode, paper.trim, paper.precision) == ("paper", "official", False, "exact")

    def three_front_ends(*options: str) -> list[dict]:
        cli = generation_settings(build_parser().parse_args(["generate", str(speech_wav), "-o", str(tmp_path / "x"),
                                                             "--sampler", "paper", *options]))
        headless = addon.headless.requests(addon.headless.build_parser().parse_args(
            ["generate", "--audio", str(speech_wav), "--armature", "Rig", "--sampler", "paper", *options]))[0]
        panel = addon.operators.generate.gather(bpy.context).settings
        return [panel.to_dict(), cli.to_dict(), headless.settings.to_dict()]

    scene.diffgesture.sampler = "paper"
    assert three_front_ends() == [paper.to_dict()] * 3  # panel, CLI, headless
    props = scene.diffgesture
    props.seed, props.variations, props.guidance, props.stabilizer = 7, 2, 2.5, False
    props.override_guidance = True  # a preset sets guidance (paper: 1.15): the panel's value counts when overridden
    props.precision, props.trim, props.bn_mode = "fp32", True, "eval"  # not overridden: the preset's values stay
    changed = settings.preset("paper", seed=7, variations=2, guidance=2.5, stabilizer=False).to_dict()
    assert three_front_ends("--seed", "7", "--variations", "2", "--guidance", "2.5", "--no-stabilizer") == \
        [changed] * 3
    props.override_precision = props.override_bn_mode = True
    changed = settings.preset("paper", seed=7, variations=2, guidance=2.5, stabilizer=False, precision="fp32",
                              bn_mode="eval").to_dict()
    assert three_front_ends("--seed", "7", "--variations", "2", "--guidance", "2.5", "--no-stabilizer",
                            "--precision", "fp32", "--bn-mode", "eval") == [changed] * 3
    assert never_touched_torch(), TorchImportWatch.attempts


def offered(parser, command: str) -> dict[str, tuple]:
    """A command line's generation options (those of the table): dest -> (flags, type, choices, default, const)."""
    import argparse
    from model_core.settings import OPTIONS
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: (tuple(a.option_strings), a.type, tuple(a.choices) if a.choices else None, a.default, a.const)
            for a in sub._actions if a.dest in OPTIONS or a.dest == "reproduce"}


def changed_values(table) -> dict[str, object]:
    """A value other than the fast preset's for every option of the table but the preset, exact in float32."""
    values = {}
    for name, o in table.items():
        if name == "preset":
            continue
        if o.choices:
            values[name] = next(c for c in o.choices if c != o.default)
        elif o.kind is bool:
            values[name] = not o.default
        else:
            low, high = o.range
            values[name] = low + 3 if o.kind is int else low + (high - low) / 4
    return values


def test_the_cli_headless_and_the_panel_offer_the_tables_options(addon, scene, speech_wav, tmp_path):
    """One table (settings.OPTIONS) makes the options: the CLI's generate and generate-batch and headless generate
    offer every option alike (flag, type, choices, default), --sampler being --preset; the panel has a property for
    every option with the table's label, range, default and choices, and an override switch (off) for those a preset
    sets, and draws each one (the advanced ones in a section of their own); all three refuse a value outside a range
    alike, and give the same settings when nothing is changed and when every option is."""
    from model_core.__main__ import build_parser, generation_settings
    settings = addon.shared.settings
    table = settings.OPTIONS
    cli = offered(build_parser(), "generate")
    assert set(cli) == {*table, "reproduce"}
    assert offered(addon.headless.build_parser(), "generate") == cli == offered(build_parser(), "generate-batch")
    for name, o in table.items():
        flags, kind, choices, default, const = cli[name]
        assert flags == (("--preset", "--sampler") if name == "preset" else o.flags)
        assert choices == o.choices and (kind is None if o.kind is bool else kind is o.kind)
        assert (default, const) == (("fast", None) if name == "preset" else (None, None)), name
    rna = scene.diffgesture.bl_rna.properties
    panel = {name: "sampler" if name == "preset" else name for name in table}  # the preset's name in older files
    set_by_presets = {name for values in settings.PRESETS.values() for name in values} - {"sampler"}
    assert set_by_presets == {"guidance", "bn_mode", "trim", "precision"}
    assert {name for name in table if f"override_{name}" in rna} == set_by_presets
    for name, o in table.items():
        p = rna[panel[name]]
        assert p.name == o.label, name
        if o.choices:
            assert [item.identifier for item in p.enum_items] == list(o.choices) and p.default == o.default
        elif o.kind is bool:
            assert p.type == "BOOLEAN" and p.default is o.default, name
        else:
            assert p.type == ("INT" if o.kind is int else "FLOAT"), name
            assert (p.hard_min, p.hard_max) == (o.range[0], min(o.range[1], 2 ** 31 - 1)), name
            assert p.default == pytest.approx(o.default, rel=1e-6), name
        if name in set_by_presets:
            assert rna[f"override_{name}"].type == "BOOLEAN" and rna[f"override_{name}"].default is False
    for name, (low, high) in settings.RANGES.items():  # what the panel clamps, the command lines refuse
        if high < 2 ** 31:
            setattr(scene.diffgesture, name, high * 2)
            assert getattr(scene.diffgesture, name) == pytest.approx(rna[name].hard_max), name
            scene.diffgesture.property_unset(name)

    def drawn() -> tuple[list[str], list[str]]:
        """The panel's texts and the properties it draws, its Advanced section open."""
        layout = Layout()
        addon.panel.DIFFGESTURE_PT_generate.draw(type("P", (), {"layout": layout, "draw_mapping": lambda *a: None})(),
                                                 bpy.context)
        return layout.texts, layout.props
    texts, props = drawn()
    assert "Advanced" in texts and set(panel.values()) - set(props) == set_by_presets  # the preset's values instead
    assert {"exact (the preset's)", "Off (the preset's)", "official (the preset's)"} & set(texts) == set()
    assert {"auto (the preset's)", "On (the preset's)", "eval (the preset's)"} <= set(texts)
    scene.diffgesture.sampler = "paper"
    texts, props = drawn()
    assert {"exact (the preset's)", "Off (the preset's)", "official (the preset's)"} <= set(texts)
    assert not {"steps", "solver", "eta"} & set(props), "the fast sampler's options are hidden for paper"
    for name in set_by_presets:
        setattr(scene.diffgesture, f"override_{name}", True)
    options = set(panel.values()) | {f"override_{name}" for name in set_by_presets}  # the panel's option properties
    assert options & set(drawn()[1]) == options - {"steps", "solver", "eta"}
    scene.diffgesture.sampler = "fast"
    assert options <= set(drawn()[1])

    def both(*options: str) -> list:
        """The CLI's and headless' settings for the options, or their refusals."""
        out = []
        for read in (lambda: generation_settings(build_parser().parse_args(
                         ["generate", str(speech_wav), "-o", str(tmp_path / "x"), *options])),
                     lambda: addon.headless.requests(addon.headless.build_parser().parse_args(
                         ["generate", "--audio", str(speech_wav), "--armature", "Rig", *options]))[0].settings):
            try:
                out.append(read().to_dict())
            except ValueError as e:  # headless' UsageError is one
                out.append(str(e))
        return out
    for name in set_by_presets:
        setattr(scene.diffgesture, f"override_{name}", False)
    scene.diffgesture.steps = settings.GenerationSettings().steps  # the scene fixture's few steps: the default again
    panel_settings = addon.operators.generate.gather(bpy.context).settings.to_dict()
    assert both() == [panel_settings] * 2 == [settings.preset("fast").to_dict()] * 2
    assert both("--sampler", "paper", "--solver", "dpm") == both("--preset", "paper", "--solver", "dpm") == \
        [settings.preset("paper", solver="dpm").to_dict()] * 2
    for name, (low, high) in settings.RANGES.items():
        flag = table[name].flag
        for bad in (low - 1, high + 1):
            refusals = both(flag, str(bad))
            assert refusals[0] == refusals[1] and f"{name} must be within" in refusals[0], refusals
    changed = changed_values(table)
    for name, value in changed.items():
        setattr(scene.diffgesture, name, value)
    for name in set_by_presets:
        setattr(scene.diffgesture, f"override_{name}", True)
    flags = [arg for name, value in changed.items()
             for arg in ([table[name].flag] if table[name].kind is bool else [table[name].flag, str(value)])]
    every = settings.preset("fast", **changed).to_dict()
    assert every != settings.preset("fast").to_dict()
    assert both(*flags) == [addon.operators.generate.gather(bpy.context).settings.to_dict()] * 2 == [every] * 2


def test_advanced_options_set_in_the_panel_reach_the_worker(addon, scene, monkeypatch):
    """Options of the panel's Advanced section go the way headless' do (the preset, with the options that change it)
    into the request the worker gets, and it samples with them: the take records the settings the worker used, and
    untrimmed the motion is whole windows (34 + 30 (K-1) frames), past the audio's end."""
    sent, send = [], addon.shared.client.WorkerClient.send

    def spy(client, request):
        sent.append(request.to_wire())
        return send(client, request)
    monkeypatch.setattr(addon.shared.client.WorkerClient, "send", spy)
    props = scene.diffgesture
    props.solver, props.fade_out = "dpm", True
    props.override_trim, props.trim = True, False
    props.override_precision, props.precision = True, "fp32"
    props.bn_mode = "official"  # not overridden: the preset's "eval" stays
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    expected = addon.shared.settings.preset("fast", steps=STEPS, solver="dpm", fade_out=True, trim=False,
                                            precision="fp32").to_dict()
    assert [m["settings"] for m in sent if m["type"] == "generate"] == [expected]
    take = addon.takes.read(props.armature.animation_data.action)
    assert take.settings == expected
    frames = len(take.poses)
    assert (frames - 34) % 30 == 0 and frames > take.duration * 15 + 1, (frames, take.duration)


def test_settings_are_validated_before_a_worker_starts(addon, scene, speech_wav, capsys):
    addon.session.SESSION.worker.shutdown()
    scene.diffgesture.guidance = 1e30  # past the property's own limit only through Python: clamped to 20
    assert scene.diffgesture.guidance == 20.0
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--guidance", "nan",
                              "--torch-python", str(TORCH_PYTHON)])
    assert rc == 2 and "guidance must be within 0.0..20.0, not nan" in capsys.readouterr().err
    rc = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--variations", "0",
                              "--torch-python", str(TORCH_PYTHON)])
    assert rc == 2 and "variations must be within 1..64, not 0" in capsys.readouterr().err
    assert addon.session.SESSION.worker.pid() is None, "refused before any worker was started"


def test_the_worker_is_never_started_on_the_main_thread(addon, scene, speech_wav, monkeypatch):
    """Every way the add-on starts a worker (Generate, its modal loop, a restart after a crash, headless, Check)
    spawns the process from another thread, so Blender's UI never waits for torch to import."""
    starts, real_popen = [], subprocess.Popen

    def spy(args, *rest, **kw):
        if "model_core.worker" in args:
            starts.append(threading.current_thread() is threading.main_thread())
        return real_popen(args, *rest, **kw)
    monkeypatch.setattr(subprocess, "Popen", spy)
    host = addon.session.SESSION.worker
    host.shutdown()
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}  # the blocking execute
    host.shutdown()
    assert drive_modal(addon)[0] == {"FINISHED"}
    scene.diffgesture.steps = 400
    assert drive_modal(addon, kill_after_progress=True)[0] == {"CANCELLED"}
    scene.diffgesture.steps = STEPS
    result, reports = drive_modal(addon)  # the dead worker is restarted
    assert result == {"FINISHED"} and any("new one was started" in m for _, m in reports), reports
    host.shutdown()
    assert addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--no-sound",
                                "--checkpoint", scene.diffgesture.checkpoint_path, "--steps", str(STEPS),
                                "--torch-python", str(TORCH_PYTHON)]) == 0
    host.shutdown()
    host.check(str(TORCH_PYTHON)).join(60)
    assert starts == [False] * 5, starts
    with pytest.raises(RuntimeError, match="off Blender's main thread"):
        host.start(str(TORCH_PYTHON))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the worker's environment from /proc")
def test_a_headless_blenders_worker_takes_every_core(addon, scene, monkeypatch):
    """blender -b (the headless command, a render farm) only waits on the worker, so the worker takes every physical
    core the load leaves it and libgomp's spinning default, as the CLI; beside a UI it would leave one core and sleep (test_worker)."""
    assert bpy.app.background, "bpy as a module is a background Blender"
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # the user's own would reach the worker as it is
    monkeypatch.delenv("DIFFGESTURE_SPARE_CORES", raising=False)
    host = addon.session.SESSION.worker
    host.shutdown()
    started = []
    thread = threading.Thread(target=lambda: started.append(host.start(str(TORCH_PYTHON))[0]))
    thread.start()
    thread.join(120)
    pid = host.pid()
    environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
    probe = "from model_core.cpu import physical_cores; print(physical_cores())"
    cores = subprocess.run([str(TORCH_PYTHON), "-c", probe], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert host.client(str(TORCH_PYTHON)).beside_ui is False
    assert started[0]["max_threads"] == int(cores.stdout), "every core the load leaves it (model_core/cpu.py)"
    assert not any(item.startswith(("OMP_WAIT_POLICY=", "DIFFGESTURE_SPARE_CORES=")) for item in environ)


# -- failures leave the .blend unchanged -------------------------------------------------------------------------
def test_cancel_leaves_blend_unchanged(addon, scene):
    scene.diffgesture.steps = 400  # long enough to be cancelled mid-run
    before = snapshot()
    result, reports = drive_modal(addon, cancel_after_progress=True)
    assert result == {"CANCELLED"} and snapshot() == before
    assert reports == [("INFO", "Generation cancelled; nothing was changed")]  # Esc is information, not an error
    assert "Generation cancelled; nothing was changed" in draw_panel(addon)


def test_sound_strip_source_without_strips_is_one_clear_line(addon, scene, capfd):
    scene.diffgesture.audio_source = "STRIP"
    before = snapshot()
    message = ("the sequencer has no sound strip: add one (Video Sequencer > Add > Sound) or choose the audio File "
               "instead")
    with pytest.raises(RuntimeError, match=rf"^Error: {re.escape(message)}\n$"):
        bpy.ops.diffgesture.generate()
    texts = draw_panel(addon)
    assert message in texts and snapshot() == before  # the panel keeps saying why after the report faded
    assert "matches no enum" not in "".join(capfd.readouterr())  # no RNA warning about an empty menu
    scene.diffgesture.audio_source = "FILE"
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    assert message not in draw_panel(addon)


def test_bad_audio_file_leaves_blend_unchanged(addon, scene, tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(os.urandom(4000))
    scene.diffgesture.audio_path = str(bad)
    before = snapshot()
    with pytest.raises(RuntimeError, match="Nothing was changed"):
        bpy.ops.diffgesture.generate()
    scene.diffgesture.audio_path = str(tmp_path / "absent.wav")
    with pytest.raises(RuntimeError, match="audio file not found"):
        bpy.ops.diffgesture.generate()
    assert snapshot() == before


def test_rig_without_usable_bones_is_refused_before_the_worker(addon, scene):
    scene.diffgesture.armature = make_rig("Prop", addon, family=None)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"^Error: the bones of 'Prop' cannot be driven: no bone is mapped to any "
                                           r"role \(none was recognised as a humanoid bone; needed at least: spine, "
                                           r"[a-z_, ]+\)\. Map them in the panel's Bones box\n$"):
        bpy.ops.diffgesture.generate()
    assert snapshot() == before


def test_dead_worker_leaves_blend_unchanged_and_is_restarted(addon, scene):
    scene.diffgesture.steps = 400
    before = snapshot()
    result, reports = drive_modal(addon, kill_after_progress=True)
    assert result == {"CANCELLED"} and "stopped unexpectedly" in reports[0][1], reports
    assert snapshot() == before
    scene.diffgesture.steps = STEPS
    result, reports = drive_modal(addon)
    assert result == {"FINISHED"} and any("new one was started" in m for _, m in reports), reports


def test_no_armature_or_edit_mode_is_refused_before_the_worker(addon, scene):
    rig = scene.diffgesture.armature
    scene.diffgesture.armature = None
    before = snapshot()
    with pytest.raises(RuntimeError, match="choose the armature"):
        bpy.ops.diffgesture.generate()
    scene.diffgesture.armature = rig
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    with pytest.raises(RuntimeError, match="edit mode"):
        bpy.ops.diffgesture.generate()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert snapshot() == before


def test_opening_a_file_drops_the_running_generation(addon, scene):
    addon.generation.Generation.create(addon.operators.generate.gather(bpy.context))
    bpy.ops.wm.read_homefile(use_empty=True)
    assert addon.generation.active() is None


@pytest.mark.parametrize("python, message", [("/nonexistent/bin/python", "/nonexistent/bin/python does not exist"),
                                             (sys.executable, "lacks torch")])
def test_unusable_interpreter_leaves_blend_unchanged(addon, scene, python, message):
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.torch_python = python
    before = snapshot()
    try:
        with pytest.raises(RuntimeError, match=message):
            bpy.ops.diffgesture.generate()
    finally:
        prefs.torch_python = str(TORCH_PYTHON)
    assert snapshot() == before


def test_check_reports_torch_cuda_and_device(addon):
    assert bpy.ops.diffgesture.check_environment() == {"FINISHED"}
    deadline = time.monotonic() + 60
    while addon.session.SESSION.worker.check_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first = addon.session.SESSION.worker.check_report()[0]
    assert first.startswith("torch 2.") and "CUDA not available" in first and "device: CPU" in first, first


def test_disabling_the_addon_stops_the_worker(addon):
    addon.session.SESSION.worker.check(str(TORCH_PYTHON)).join(60)
    pid = addon.session.SESSION.worker.pid()
    bpy.ops.preferences.addon_disable(module=MODULE)
    try:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert never_touched_torch(), TorchImportWatch.attempts
    finally:
        bpy.ops.preferences.addon_enable(module=MODULE)


def test_sound_strip_survives_moving_the_blend_or_is_packed(addon, scene, speech_wav, small_checkpoint, tmp_path):
    scene.diffgesture.pack_sound = True  # the panel's option
    assert bpy.ops.diffgesture.generate() == {"FINISHED"}
    assert scene.sequence_editor.strips_all[0].sound.packed_file.size == speech_wav.stat().st_size
    rig = scene.diffgesture.armature.name
    common = ["--armature", rig, "--checkpoint", str(small_checkpoint), "--steps", str(STEPS),
              "--torch-python", str(TORCH_PYTHON)]
    project = tmp_path / "project"
    project.mkdir()
    for pack in ([], ["--pack-sound"]):
        bpy.ops.wm.read_homefile(use_empty=True)
        make_rig(rig, addon)
        out = project / f"shot{len(pack)}.blend"
        assert addon.headless.main(["generate", "--audio", str(speech_wav), "--output", str(out), *pack,
                                    *common]) == 0
        moved = tmp_path / "elsewhere" / out.name  # the .blend travels; the audio stays where it was
        moved.parent.mkdir(exist_ok=True)
        out.rename(moved)
        bpy.ops.wm.open_mainfile(filepath=str(moved))
        sound = bpy.context.scene.sequence_editor.strips_all[0].sound
        if pack:
            assert sound.packed_file.size == speech_wav.stat().st_size
        else:  # absolute: a relative path would have climbed out of the project (//../speech0/speech.wav)
            assert sound.packed_file is None and sound.filepath == str(speech_wav.resolve())
    (project / "audio").mkdir()
    line = project / "audio" / "line.wav"
    line.write_bytes(speech_wav.read_bytes())
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "scene.blend"))  # the audio lies inside this project
    assert addon.headless.main(["generate", "--audio", str(line), *common]) == 0
    assert bpy.context.scene.sequence_editor.strips_all["line"].sound.filepath == "//audio/line.wav"


def test_folder_clips_follow_the_existing_sound_and_progress_lines_do_not_repeat(addon, scene, speech_wav,
                                                                                  small_checkpoint, tmp_path, capsys):
    existing = scene.sequence_editor_create().strips.new_sound("voice", str(speech_wav), 1, 1)
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        (folder / name).write_bytes(speech_wav.read_bytes())
    summary = tmp_path / "summary.json"
    assert addon.headless.main(["generate", "--audio", str(folder), "--armature", scene.diffgesture.armature.name,
                                "--checkpoint", str(small_checkpoint), "--steps", str(STEPS), "--json", str(summary),
                                "--torch-python", str(TORCH_PYTHON)]) == 0
    err = capsys.readouterr().err
    first, second = json.loads(summary.read_text())["results"]
    for result in (first, second):  # the frames reported are those of the action's first and last keys
        keys = bpy.data.actions[result["actions"][0]].frame_range
        assert (result["frame_start"], result["frame_end"]) == (round(keys[0]), round(keys[1])), (result, keys[:])
    first_sound = scene.sequence_editor.strips_all[first["sound_strip"]]
    assert first["frame_start"] == existing.frame_final_end
    assert second["frame_start"] == max(first["frame_end"] + 1, first_sound.frame_final_end)  # after its keys and voice
    assert (f"a.wav: the clips were placed after the sound strips already in the sequencer: the first starts at "
            f"frame {existing.frame_final_end}, not 1") in err
    sounds = sorted((s.frame_final_start, s.frame_final_end) for s in scene.sequence_editor.strips_all)
    assert all(end <= start for (_, end), (start, _) in zip(sounds, sounds[1:])), sounds  # never two voices at once
    progress = [line for line in err.splitlines() if re.fullmatch(r"[ab]\.wav: \d+%", line)]
    assert len(progress) >= 2 and all(x != y for x, y in zip(progress, progress[1:])), progress
    assert all(int(line.split()[-1][:-1]) % 10 == 0 for line in progress), progress


def test_intensity_widens_the_gesture(addon, scene, speech_wav):
    """Headless --intensity 2 gives at least 1.3x the forearm spread of --intensity 1 with the same seed. Intensity
    doubles each direction's deviation from the mean pose in the normalised direction space before renormalising,
    so small angles about double and wide ones grow less: the bundled model's gestures measured 1.45x."""
    common = ["generate", "--audio", str(speech_wav), "--armature", "Rig", "--no-sound", "--steps", str(STEPS),
              "--seed", "4", "--torch-python", str(TORCH_PYTHON)]
    rig = bpy.data.objects["Rig"]
    spreads = {}
    for intensity in ("1", "2"):
        before = set(bpy.data.actions)
        assert addon.headless.main(common + ["--intensity", intensity]) == 0
        action, = set(bpy.data.actions) - before
        start, end = (int(x) for x in action.frame_range)
        forearm = next(b.name for b in rig.pose.bones if b.name.endswith("LeftForeArm"))
        spreads[intensity] = forearm_spread(rig, action, forearm, range(start, end + 1, 2))
    assert spreads["2"] >= 1.3 * spreads["1"] > 0, spreads
    assert addon.headless.main(common + ["--intensity", "5"]) == 2, "outside 0..3 is refused before generating"


@pytest.mark.parametrize("suffix", [".fbx", ".glb", ".bvh"])
def test_export_reimports_as_an_action_of_the_same_length(addon, scene, speech_wav, small_checkpoint, tmp_path,
                                                          suffix):
    """headless --export writes the take through Blender's exporter; Blender's importer reads it back as an action
    of the same length; the scene's selection, active object, action and frame range are as before the export."""
    path = tmp_path / f"take{suffix}"
    bystander = bpy.data.objects.new("Bystander", None)
    scene.collection.objects.link(bystander)
    bystander.select_set(True)
    bpy.context.view_layer.objects.active = bystander
    range_before = (scene.frame_start, scene.frame_end)
    code = addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig", "--no-sound",
                                "--checkpoint", str(small_checkpoint), "--steps", str(STEPS),
                                "--torch-python", str(TORCH_PYTHON), "--export", str(path)])
    assert code == 0 and path.is_file()
    rig = bpy.data.objects["Rig"]
    take = rig.animation_data.action
    length = take.frame_range[1] - take.frame_range[0]
    assert bystander.select_get() and not rig.select_get()
    assert bpy.context.view_layer.objects.active == bystander and scene.frame_end >= range_before[1]
    bpy.ops.wm.read_homefile(use_empty=True)  # an empty scene; the preferences (and the add-on) stay
    if suffix == ".fbx":
        bpy.ops.import_scene.fbx(filepath=str(path))
    elif suffix == ".glb":
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        bpy.ops.import_anim.bvh(filepath=str(path))
    imported = [a for a in bpy.data.actions]
    assert len(imported) == 1, [a.name for a in imported]
    got = imported[0].frame_range[1] - imported[0].frame_range[0]
    assert abs(got - length) <= 1, (got, length)
    assert addon.headless.main(["generate", "--audio", str(speech_wav), "--armature", "Rig",
                                "--export", str(tmp_path / "take.obj")]) == 2, "a wrong ending is refused first"
