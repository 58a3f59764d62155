"""The package split holds: model_core never imports bpy or training, and the two modules the add-on uses from
model_core (skeleton, protocol) need no torch."""
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
    assert {"network", "samplers", "pipeline", "checkpoint", "worker", "protocol", "skeleton", "audio"} <= set(modules)
    loaded = imported_after("\n".join(f"import model_core.{m}" for m in modules))
    assert "torch" in loaded and not loaded & {"bpy", "training", "diffgesture_blender"}


def test_addon_facing_modules_need_no_torch():
    loaded = imported_after("import model_core.skeleton, model_core.protocol")
    assert "numpy" in loaded and "torch" not in loaded and "bpy" not in loaded
