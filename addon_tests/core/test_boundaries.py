"""The package split holds: model_core never imports bpy or training; the modules the add-on uses from model_core
(skeleton, settings, protocol, client) need neither torch nor bpy; in the add-on only the scene writer (and the code
it calls to key actions) writes to the .blend."""
import ast
import os
import pkgutil
import subprocess
import sys

import model_core
from addon_tests.paths import ROOT


def imported_after(code: str) -> set[str]:
    """Top-level module names imported by a fresh interpreter after running code."""
    probe = code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return set(out.stdout.split())


def test_model_core_imports_neither_bpy_nor_training():
    modules = [m.name for m in pkgutil.iter_modules(model_core.__path__) if m.name != "__main__"]
    assert {"network", "samplers", "pipeline", "checkpoint", "worker", "protocol", "client", "settings", "skeleton",
            "audio"} <= set(modules)
    loaded = imported_after("\n".join(f"import model_core.{m}" for m in modules))
    assert "torch" in loaded and not loaded & {"bpy", "training", "diffgesture_blender"}


def test_addon_facing_modules_need_no_torch():
    loaded = imported_after("import model_core.skeleton, model_core.protocol, model_core.client")
    assert "numpy" in loaded and "torch" not in loaded and "bpy" not in loaded
    # time and windows, CPU facts, progress, the file rule and the BVH writer: torch-free too
    loaded = imported_after("import model_core.timing, model_core.cpu, model_core.progress, model_core.files, "
                            "model_core.bvh")
    assert "model_core" in loaded and not loaded & {"torch", "bpy"}


def test_settings_and_the_cli_parser_import_neither_torch_nor_bpy():
    loaded = imported_after("import model_core.settings")
    assert "model_core" in loaded and not loaded & {"torch", "bpy", "numpy"}
    loaded = imported_after("from model_core.__main__ import build_parser, generation_settings\n"
                            "generation_settings(build_parser().parse_args(['generate', 'a.wav', '-o', 'b', "
                            "'--sampler', 'paper']))")
    assert not loaded & {"torch", "bpy"}


# Calls that create, remove or key ID data (bpy.data.*.new, strips.new_sound, keyframe_points.foreach_set ...), and
# attributes a generation sets on a scene or an animation.
WRITER_CALLS = {"new", "new_sound", "remove", "link", "unlink", "foreach_set", "keyframe_insert",
                "sequence_editor_create", "animation_data_create"}
WRITER_ATTRIBUTES = {"frame_start", "frame_end", "action", "action_slot", "use_fake_user"}


def data_writes(source: str) -> list[str]:
    """The bpy data writes a module's source makes: calls of WRITER_CALLS on an attribute chain (`a.b.new()`, not a
    list's `items.remove()`), and assignments to WRITER_ATTRIBUTES."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITER_CALLS:
            receiver = node.func.value
            if node.func.attr in {"remove", "unlink"} and not node.args:
                continue  # a file's Path.unlink(missing_ok=...): bpy's remove/unlink always name what they drop
            if isinstance(receiver, (ast.Attribute, ast.Call)) or node.func.attr not in {"new", "remove", "link",
                                                                                         "unlink"}:
                found.append(ast.unparse(node.func))
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        found += [ast.unparse(t) for t in targets if isinstance(t, ast.Attribute) and t.attr in WRITER_ATTRIBUTES]
        found += [ast.unparse(t) for t in targets  # a take record written onto an action: action[takes.KEY] = ...
                  if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Attribute) and t.slice.attr == "KEY"]
    return found


def test_only_the_scene_writer_writes_bpy_data():
    addon = ROOT / "diffgesture_blender"
    writes = {str(p.relative_to(addon)): data_writes(p.read_text(encoding="utf-8")) for p in addon.rglob("*.py")}
    assert writes["scene_writer.py"], "the detector finds the scene writer's own writes"
    assert "action[takes.KEY]" in writes["scene_writer.py"], "and its take records"
    # retargeting keys the actions the scene writer asks for; demo_character builds the demo character; __init__
    # registers; export assigns the take for the exporters and puts every setting back (test_export checks the scene
    # is as it was)
    allowed = {"scene_writer.py", "demo_character.py", "__init__.py", "export.py"}
    writers = {name for name, found in writes.items() if found}
    assert {name for name in writers if name not in allowed and not name.startswith("retarget")} == set(), \
        {name: writes[name] for name in writers}
    for module in ("generation.py", "worker_host.py", "request.py", "operators.py", "headless.py", "panel.py",
                   "takes.py"):
        assert module in writes and not writes[module], (module, writes[module])
