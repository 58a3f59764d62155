"""build.py's wiring: which environments each command prepares (setting one up takes minutes and gigabytes)."""
import argparse
import sys

from addon_tests.paths import ROOT

sys.path.insert(0, str(ROOT))
import build  # noqa: E402


def test_demo_prepares_only_the_torch_and_blender_environments(monkeypatch, tmp_path):
    prepared, commands = [], []
    monkeypatch.setattr(build, "setup_system", lambda: None)
    monkeypatch.setattr(build, "setup_env", lambda name: prepared.append(name) or build.env_python(name))
    monkeypatch.setattr(build, "run", lambda cmd, **kw: commands.append([str(c) for c in cmd]))
    build.cmd_demo(argparse.Namespace(out=str(tmp_path), no_render=True))
    assert prepared == ["torch", "blender"]  # blender5 (Blender 5.0) is for the tests only
    assert commands[0][0] == str(build.env_python("blender")) and "--no-render" in commands[0]
    assert set(build.setup()) == set(build.MAIN_ENVS) == {"torch", "blender", "blender5"}  # the tests: all three
