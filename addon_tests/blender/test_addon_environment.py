"""The torch environment: the plan (pure), its builder, and in real Blender what Generate, Check, Create and Cancel
tell a user who has no environment, a broken one or their own. No network: pip only ever sees a package index on a
closed or silent local port, and the environments without packages are real venvs."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest

from addon_tests.blender.helpers import MODULE, draw_preferences, snapshot
from addon_tests.paths import ROOT, TORCH_PYTHON
from diffgesture_blender import environment as env
from diffgesture_blender.environment import Gpu, pip_plan


@pytest.mark.parametrize("gpus, variant", [
    ([], "cpu"),
    ([Gpu("GeForce GTX 680", (3, 0), 470)], "cpu"),  # Kepler: too old for current torch
    ([Gpu("GeForce GTX 1080", (6, 1), 550)], "cu126"),  # Pascal
    ([Gpu("Tesla V100", (7, 0), 580)], "cu126"),  # Volta: dropped by the CUDA 12.8 builds
    ([Gpu("GeForce RTX 2080", (7, 5), 560)], "cu126"),  # Turing, driver too old for 12.8
    ([Gpu("GeForce RTX 4090", (8, 9), 575)], "cu128"),
    ([Gpu("NVIDIA H100", (9, 0), 580)], "cu128"),
    ([Gpu("GeForce RTX 5090", (12, 0), 575)], "cu128"),  # Blackwell needs 12.8
    ([Gpu("GeForce RTX 3060", (8, 6), 470)], "cpu"),  # driver predates CUDA 12
    ([Gpu("old", (3, 5), 580), Gpu("GeForce RTX 3090", (8, 6), 580)], "cu128"),  # best GPU wins
])
def test_pip_plan_by_gpu_generation(gpus, variant):
    plan = pip_plan(gpus)
    assert plan.variant == variant and plan.reason
    args = plan.pip_args(["https://studio.example/extra"])
    assert "--index-url" not in args  # the user's own index (pip.conf, PIP_INDEX_URL) stays the main one
    extras = [args[i + 1] for i, a in enumerate(args) if a == "--extra-index-url"]
    assert extras == ["https://studio.example/extra", f"https://download.pytorch.org/whl/{variant}"]
    assert f"torch=={env.TORCH_VERSION}" in args and any(a.startswith("soundfile") for a in args)


def test_torch_version_matches_the_tested_requirements():
    pins = (ROOT / "requirements" / "torch.txt").read_text()
    assert f"torch=={env.TORCH_VERSION}" in pins


def test_parse_nvidia_smi():
    text = "NVIDIA H100 80GB HBM3, 9.0, 570.86.15\nbroken line\nGeForce GTX 1080, 6.1, 535.54\n"
    assert env.parse_nvidia_smi(text) == [Gpu("NVIDIA H100 80GB HBM3", (9, 0), 570),
                                          Gpu("GeForce GTX 1080", (6, 1), 535)]
    assert env.parse_nvidia_smi("") == []


def test_builder_reports_a_failed_step_with_its_log(tmp_path):
    builder = env.EnvironmentBuilder(tmp_path / "torch-env", pip_plan([]), python=str(tmp_path / "no-python"))
    builder.start()
    builder.wait(30)
    assert builder.done and "creating the virtual environment failed" in builder.error
    log = builder.log_path.read_text()
    assert "Plan: no NVIDIA GPU found" in log and "FAILED" in log


def test_builder_makes_a_venv_before_installing(tmp_path):
    builder = env.EnvironmentBuilder(tmp_path / "torch-env", pip_plan([]), python=sys.executable)
    stages = [s for s, _ in builder.steps()]
    assert stages[0] == "creating the virtual environment" and "PyTorch (cpu)" in stages[2]
    assert builder.steps()[2][1][0] == str(env.venv_python(tmp_path / "torch-env"))


# -- in real Blender: Generate, Check, Create, Cancel as a user meets them -----------------------------------------
def own_env(addon) -> Path:
    return addon.preferences.env_dir()


@pytest.fixture
def no_index(monkeypatch):
    """pip sees only a package index on a closed local port (and no pip.conf, no local wheels): nothing downloads."""
    port = free_port()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("DIFFGESTURE_TORCH_INDEX", f"http://127.0.0.1:{port}/whl")
    return port


@pytest.fixture
def silent_index(monkeypatch, no_index):
    """A package index that accepts connections and never answers: pip waits, so an install can be interrupted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("PIP_INDEX_URL", url + "/simple")
    monkeypatch.setenv("DIFFGESTURE_TORCH_INDEX", url + "/whl")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "300")
    yield url
    server.close()


@pytest.fixture
def clean_env(addon):
    """No extension environment, no builder, no Check result before and after; Torch Python restored."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    ops = addon.operators.DIFFGESTURE_OT_create_environment

    def clean():
        if ops.builder is not None:
            ops.builder.cancel()
            ops.builder.wait(60)
            ops.builder = None
        shutil.rmtree(own_env(addon), ignore_errors=True)
        addon.worker_host.HOST.forget_check()
    clean()
    yield prefs
    clean()
    prefs.torch_python = str(TORCH_PYTHON)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_venv(folder: Path) -> Path:
    """A real Python environment without numpy, torch or anything else (what a failed Create leaves)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return env.venv_python(folder)


def run_check(addon) -> list[str]:
    assert bpy.ops.diffgesture.check_environment() == {"FINISHED"}
    deadline = time.monotonic() + 60
    while addon.worker_host.HOST.check_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return addon.worker_host.HOST.check_report()


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def running_pip(builder) -> bool:
    """The builder's current process is pip (the venv step before it has ended)."""
    return builder._proc is not None and builder._proc.args[2] == "pip" and builder._proc.poll() is None


def test_generate_before_any_environment_says_what_to_press(addon, scene, clean_env):
    clean_env.torch_python = ""
    assert "No environment yet: press Create Environment" in draw_preferences(addon)
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"^Error: there is no torch environment yet: press Create Environment in "
                                           r"Edit > Preferences > Add-ons > DiffGesture\. Nothing was changed"):
        bpy.ops.diffgesture.generate()
    assert snapshot() == before
    assert run_check(addon) == ["Check failed: there is no torch environment yet: press Create Environment in "
                                "Edit > Preferences > Add-ons > DiffGesture"]


@pytest.mark.parametrize("case", ["failed-create", "custom-without-numpy", "custom-without-torch"])
def test_every_missing_package_is_one_sentence_with_the_button(addon, scene, clean_env, tmp_path, case):
    if case == "failed-create":  # the extension's own environment, left without packages
        clean_env.torch_python = ""
        bare_venv(own_env(addon))
        expected = (r"the torch environment lacks numpy, torch and soundfile \(its creation failed or did not "
                    r"finish\): press Create Environment in Edit > Preferences > Add-ons > DiffGesture again")
    else:  # a Python the user chose: one with nothing, or Blender's own (numpy but no torch)
        python = bare_venv(tmp_path / "venv") if case == "custom-without-numpy" else Path(sys.executable)
        clean_env.torch_python = str(python)
        lacks = "numpy, torch and soundfile" if case == "custom-without-numpy" else "torch and soundfile"
        expected = (rf"the Torch Python {re.escape(str(python))} lacks {lacks}: install them into it "
                    rf"\(torch=={env.TORCH_VERSION}\), or clear Torch Python and press Create Environment in "
                    r"Edit > Preferences > Add-ons > DiffGesture")
    with pytest.raises(RuntimeError, match="^Error: " + expected + r"\. Nothing was changed\n$"):
        bpy.ops.diffgesture.generate()
    report = run_check(addon)
    assert len(report) == 1 and re.fullmatch("Check failed: " + expected, report[0]), report
    assert "Traceback" not in report[0]


def test_unreachable_index_fails_with_pips_reason_and_keeps_the_users_index(addon, clean_env, no_index):
    clean_env.torch_python = ""
    assert run_check(addon)[0].startswith("Check failed")
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    assert addon.worker_host.HOST.check_report() == []  # Check described the environment being replaced
    builder = addon.operators.DIFFGESTURE_OT_create_environment.builder
    seen = set()
    while not builder.done:
        seen.update(t for t in draw_preferences(addon) if re.search(r" \(\d+:\d\d\)$", t))
        time.sleep(0.05)
    assert any(t.startswith("creating the virtual environment (0:0") for t in seen), seen  # elapsed time shown
    assert builder.error == (f"installing PyTorch (cpu) and the core's requirements failed: Could not find a version "
                             f"that satisfies the requirement torch=={env.TORCH_VERSION} (from versions: none) "
                             f"(see {builder.log_path})")
    assert builder.error in draw_preferences(addon)
    log = builder.log_path.read_text()
    assert (f"Index: http://127.0.0.1:{no_index}/simple (your pip configuration is kept); PyTorch's cpu index added "
            f"as an extra: http://127.0.0.1:{no_index}/whl/cpu") in log
    assert f"--extra-index-url http://127.0.0.1:{no_index}/whl/cpu torch=={env.TORCH_VERSION}" in log
    assert "--index-url" not in log.replace("--extra-index-url", "")
    assert not builder.lock_path.exists()


def test_cancel_stops_pip_and_a_second_create_is_refused(addon, scene, clean_env, silent_index):
    clean_env.torch_python = ""
    ops = addon.operators.DIFFGESTURE_OT_create_environment
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    builder = ops.builder
    wait_for(lambda: running_pip(builder), what="pip to start")  # (stage is set before its process starts)
    pip = builder._proc.pid
    lock = {"owner": os.getpid(), "step": pip, "env": str(own_env(addon))}
    wait_for(lambda: json.loads(builder.lock_path.read_text()) == lock, 10, "the lock to name pip")
    with pytest.raises(RuntimeError, match="already being created: wait for it, or press Cancel"):
        bpy.ops.diffgesture.create_environment()
    with pytest.raises(RuntimeError, match=r"^Error: the torch environment is still being created: wait for Create "
                                           r"Environment to finish \(its progress is in Edit > Preferences"):
        bpy.ops.diffgesture.generate()
    assert "<diffgesture.cancel_environment>" in draw_preferences(addon)
    assert bpy.ops.diffgesture.cancel_environment() == {"FINISHED"}
    builder.wait(30)
    assert builder.done and builder.error == ("cancelled while updating pip; press Create Environment in "
                                              "Edit > Preferences > Add-ons > DiffGesture to start again")
    assert not env.pid_alive(pip) and not builder.lock_path.exists()
    assert bpy.ops.diffgesture.cancel_environment.poll() is False


BUILDER_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import environment as env
builder = env.EnvironmentBuilder(sys.argv[2], env.pip_plan([]))
builder.start()
while builder._proc is None or builder._proc.args[2] != "pip":  # the venv's step has ended, pip's has begun
    time.sleep(0.1)
while json.loads(builder.lock_path.read_text())["step"] != builder._proc.pid:  # and the lock names it
    time.sleep(0.1)
print(builder._proc.pid, flush=True)
sys.stdin.readline()  # then leave: the normal exit of the interpreter (Blender quitting) runs atexit
"""


def other_blender(addon, env_dir: Path) -> tuple[subprocess.Popen, int]:
    """Another process creating the environment in `env_dir` with the add-on's own builder; (it, its pip's PID)."""
    proc = subprocess.Popen([sys.executable, "-c", BUILDER_SCRIPT, str(Path(env.__file__).parent), str(env_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_quitting_stops_pip(addon, tmp_path, silent_index):
    proc, pip = other_blender(addon, tmp_path / "torch-env")
    assert env.pid_alive(pip)
    proc.communicate("\n", timeout=30)
    wait_for(lambda: not env.pid_alive(pip), 30, "pip to stop")
    assert not (tmp_path / "torch-env.lock").exists()


def test_create_refuses_while_another_blender_installs_and_takes_over_when_it_is_gone(addon, clean_env,
                                                                                       silent_index):
    clean_env.torch_python = ""
    proc, pip = other_blender(addon, own_env(addon))
    try:
        with pytest.raises(RuntimeError, match=rf"Another Blender \(PID {proc.pid}\) is already creating the "
                                               rf"environment in {re.escape(str(own_env(addon)))}: wait for it"):
            bpy.ops.diffgesture.create_environment()
        proc.kill()  # that Blender crashed: its pip goes on alone
        proc.wait()
        assert env.pid_alive(pip)
        assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
        builder = addon.operators.DIFFGESTURE_OT_create_environment.builder
        wait_for(lambda: not env.pid_alive(pip), 30, "the orphaned pip to stop")
        note = f"stopped the installer (PID {pip}) left running by an earlier Blender (PID {proc.pid}); starting again"
        assert builder.notes == [note] and note in draw_preferences(addon)
        wait_for(lambda: builder.log_path.is_file() and note in builder.log_path.read_text(), 30, "the log")
    finally:
        proc.kill()
        if env.pid_alive(pip):
            os.kill(pip, 9)


def test_custom_python_wins_and_the_preferences_offer_to_switch(addon, clean_env):
    clean_env.torch_python = str(TORCH_PYTHON)
    assert run_check(addon)[0].startswith("torch 2.")
    own = bare_venv(own_env(addon))  # the extension's environment now exists too
    texts = draw_preferences(addon)
    assert "Torch Python is used (cleared, the extension's environment would be)" in texts
    assert "<diffgesture.use_extension_environment>" in texts
    assert bpy.ops.diffgesture.use_extension_environment() == {"FINISHED"}
    assert clean_env.torch_python == "" and addon.preferences.get().python == str(own)
    assert addon.worker_host.HOST.check_report() == []  # that Check described the other interpreter
    assert f"Using the extension's environment: {own}" in draw_preferences(addon)


def test_headless_without_an_environment_names_torch_python(addon, scene, clean_env, tmp_path, capsys):
    clean_env.torch_python = ""
    argv = ["generate", "--audio", scene.diffgesture.audio_path, "--armature", scene.diffgesture.armature.name,
            "--checkpoint", scene.diffgesture.checkpoint_path]
    assert addon.headless.main(argv) == addon.headless.EXIT_USAGE
    assert ("diffgesture: error: there is no torch environment yet: pass --torch-python with the interpreter of an "
            "environment that has torch, or press Create Environment in the add-on's preferences") in \
        capsys.readouterr().err
    assert addon.headless.main([*argv, "--torch-python", sys.executable]) == addon.headless.EXIT_USAGE
    assert f"the Torch Python {sys.executable} lacks torch and soundfile: pass --torch-python" in \
        capsys.readouterr().err
