"""The package split holds: model_core never imports bpy or training; the modules the add-on uses from model_core
(skeleton, settings, protocol, client) need neither torch nor bpy; in the add-on only the scene writer (and the code
it calls to key actions) writes to the .blend; no two modules import each other, however indirectly."""
import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

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
    operators = [str(p.relative_to(addon)) for p in (addon / "operators").glob("*.py")]
    assert len(operators) >= 5, operators
    for module in ("generation.py", "worker_host.py", "request.py", "session.py", "headless.py", "panel.py",
                   "takes.py", *operators):
        assert module in writes and not writes[module], (module, writes[module])


def module_files(packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of the packages (source files under ROOT), by its dotted name ("a.b" for a/b.py, "a" for
    a/__init__.py)."""
    files = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The modules of `files` that module `name` imports, at the top, inside functions (lazy imports count) or under
    `if TYPE_CHECKING:` (imports for annotations tie modules together too). In the built extension model_core is
    bundled inside the add-on, so the add-on's `.model_core` is model_core."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                above = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(above + ([node.module] if node.module else []))
            named += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
    found = set()
    for module in named:
        module = module.replace("diffgesture_blender.model_core", "model_core", 1)
        while module and module not in files:  # from a.b import function -> a.b
            module = module.rpartition(".")[0]
        if module and module != name:
            found.add(module)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports that comes back to where it started ([a, b, a]), or None when the graph has none."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if (cycle := visit(imported)) is not None:
                return cycle
        path.pop()
        done.add(module)
        return None
    return next((cycle for module in sorted(graph) if (cycle := visit(module)) is not None), None)


def test_no_import_cycle_in_model_core_or_the_addon():
    """Modules that import each other (directly or through others, lazily, for annotations alone or not) only work
    in some import orders and tie their concerns together: the add-on's session state is one module that imports
    none of its users."""
    files = module_files(("model_core", "diffgesture_blender"))
    graph = {name: imported_modules(name, path, files) for name, path in files.items()}
    assert "model_core.pipeline" in graph["model_core.worker"], "imports inside functions are read"
    assert "model_core.network" in graph["model_core.samplers"], "imports for annotations alone are read"
    assert "model_core.client" in graph["diffgesture_blender.shared"], "the add-on's bundled model_core is model_core"
    assert {"diffgesture_blender.session", "diffgesture_blender.request"} <= graph["diffgesture_blender.generation"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"], "a cycle is found"
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None, "shared imports are no cycle"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
