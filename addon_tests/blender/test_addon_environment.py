"""The torch environment: the plan (pure), its builder, and in real Blender what Generate, Check, Create and Cancel
tell a user who has no environment, a broken one or their own. No network: pip only ever sees a package index on a
closed or silent local port, or a local one serving small wheels built here (never torch itself), and the
environments without packages are real venvs."""
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
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


def test_a_lock_naming_this_process_holds_only_while_its_builder_runs(tmp_path):
    """A lock that names this process while none of its builders runs was left by an earlier process with the same
    PID (a restarted container): nobody is creating the environment, and a builder takes the lock over. While that
    builder runs, the lock is this process's, and a second builder for the same folder is refused."""
    folder = tmp_path / "torch-env"
    env.lock_path(folder).write_text(json.dumps({"owner": os.getpid(), "step": None, "env": str(folder)}))
    assert env.installer(folder) is None and not env.building_here(folder)
    slow = tmp_path / "slow-python"  # its venv step runs until cancelled
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    builder = env.EnvironmentBuilder(folder, pip_plan([]), python=str(slow))
    builder.start()
    try:
        wait_for(lambda: builder._proc is not None, 30, "the venv step to start")
        assert env.installer(folder) == os.getpid() and env.building_here(folder)
        with pytest.raises(env.InstallerBusy, match="already being created"):
            env.EnvironmentBuilder(folder, pip_plan([])).start()
    finally:
        builder.cancel()
        builder.wait(30)
    assert builder.done and env.installer(folder) is None and not env.lock_path(folder).exists()
    assert not env.building_here(folder)


def test_builder_makes_a_venv_before_installing(tmp_path):
    builder = env.EnvironmentBuilder(tmp_path / "torch-env", pip_plan([]), python=sys.executable)
    stages = [s for s, _ in builder.steps()]
    assert stages[0] == "creating the virtual environment" and "PyTorch (cpu)" in stages[2]
    assert builder.steps()[2][1][0] == str(env.venv_python(tmp_path / "torch-env"))


# -- in real Blender: Generate, Check, Create, Cancel as a user meets them -----------------------------------------
def own_env(addon) -> Path:
    return addon.worker_host.env_dir()


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
def silent_server():
    """A server on loopback that accepts connections and never answers; its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def silent_index(monkeypatch, no_index, silent_server):
    """A package index that accepts connections and never answers: pip waits, so an install can be interrupted."""
    monkeypatch.setenv("PIP_INDEX_URL", silent_server + "/simple")
    monkeypatch.setenv("DIFFGESTURE_TORCH_INDEX", silent_server + "/whl")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "300")
    return silent_server


@pytest.fixture
def clean_env(addon):
    """No extension environment, no builder, no Check result before and after; Torch Python restored."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    session = addon.session.SESSION

    def clean():
        if session.environment_builder is not None:
            session.environment_builder.cancel()
            session.environment_builder.wait(60)
            session.environment_builder = None
        shutil.rmtree(own_env(addon), ignore_errors=True)
        env.log_path(own_env(addon)).unlink(missing_ok=True)  # a new user: no earlier build to report on
        addon.session.SESSION.worker.forget_check()
    clean()
    yield prefs
    clean()
    prefs.torch_python = str(TORCH_PYTHON)


def wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel holding `files` (path -> source), in folder/name/ as an index serves it."""
    dist = f"{name}-{version}"
    files = {**files, f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}.dist-info/RECORD"])
    path = folder / name / f"{dist}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve folders over HTTP on loopback (a directory listing is a PEP 503 project page); returns url(folder)."""
    servers = []

    def url(folder: Path) -> str:
        handler = lambda *a, **k: QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield url
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def wheel_index(monkeypatch, no_index, serve, tmp_path):
    """The user's own index (PIP_INDEX_URL) on loopback, holding small stand-ins for torch, numpy and soundfile
    that the builder's last step can import (torch.__version__, torch.cuda.is_available())."""
    folder = tmp_path / "simple"
    wheel(folder, "torch", env.TORCH_VERSION, {"torch/__init__.py": f"from . import cuda\n__version__ = "
                                                                    f"{env.TORCH_VERSION!r}\n",
                                              "torch/cuda.py": "def is_available():\n    return False\n"})
    wheel(folder, "numpy", "1.26.4", {"numpy/__init__.py": "__version__ = '1.26.4'\n"})
    wheel(folder, "soundfile", "0.12.1", {"soundfile.py": "__version__ = '0.12.1'\n"})
    url = serve(folder)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    return url


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
    while addon.session.SESSION.worker.check_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return addon.session.SESSION.worker.check_report()


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


def test_a_missing_torch_fails_with_pips_reason_and_keeps_the_users_index(addon, clean_env, no_index, serve,
                                                                          tmp_path, monkeypatch):
    """The user's index is a closed port, PyTorch's answers but holds nothing: pip's own reason, the user's index
    kept as the main one and PyTorch's added as an extra, and the preferences call the result incomplete."""
    torch_index = serve(tmp_path) + "/whl"
    monkeypatch.setenv("DIFFGESTURE_TORCH_INDEX", torch_index)
    clean_env.torch_python = ""
    assert run_check(addon)[0].startswith("Check failed")
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    assert addon.session.SESSION.worker.check_report() == []  # Check described the environment being replaced
    builder = addon.session.SESSION.environment_builder
    seen = set()
    while not builder.done:
        seen.update(t for t in draw_preferences(addon) if re.search(r" \(\d+:\d\d\)$", t))
        time.sleep(0.05)
    assert any(t.startswith("creating the virtual environment (0:0") for t in seen), seen  # elapsed time shown
    assert builder.error == (f"installing PyTorch (cpu) and the core's requirements failed: Could not find a version "
                             f"that satisfies the requirement torch=={env.TORCH_VERSION} (from versions: none) "
                             f"(see {builder.log_path})")
    texts = draw_preferences(addon)
    assert builder.error in texts and builder.notes == []  # PyTorch's index answered: nothing to say about it
    assert "The extension's environment is incomplete (creating it failed): press Create Environment" in texts
    log = builder.log_path.read_text()
    assert (f"Index: http://127.0.0.1:{no_index}/simple (your pip configuration is kept); PyTorch's cpu index added "
            f"as an extra: {torch_index}/cpu") in log
    assert f"--extra-index-url {torch_index}/cpu torch=={env.TORCH_VERSION}" in log
    assert "--index-url" not in log.replace("--extra-index-url", "")
    assert not builder.lock_path.exists()


def test_unreachable_torch_index_is_said_in_words_and_the_install_goes_on_from_the_users_index(
        addon, clean_env, wheel_index, silent_server, monkeypatch):
    """PyTorch's index accepts connections and never answers (a firewall that drops them): within PROBE_TIMEOUT the
    builder says so, leaves it out, and installs from the user's own index; pip alone would wait 300 s for it."""
    monkeypatch.setenv("DIFFGESTURE_TORCH_INDEX", silent_server + "/whl")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "300")
    clean_env.torch_python = ""
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    builder = addon.session.SESSION.environment_builder
    installing = f"installing PyTorch ({builder.plan.variant}) and the core's requirements"
    wait_for(lambda: builder.stage == installing or builder.done, 300, "the install step")
    assert "The extension's environment is being created (progress below)" in draw_preferences(addon)
    began = time.monotonic()
    builder.wait(120)  # pip alone would wait 300 s for PyTorch's index
    took = time.monotonic() - began
    assert builder.done and builder.error is None, builder.log_path.read_text()
    note = (f"PyTorch's index is unreachable ({silent_server}/whl/cpu: no answer within {env.PROBE_TIMEOUT:g} s); "
            f"installing from your own index ({wheel_index})")
    texts = draw_preferences(addon)
    assert builder.notes == [note] and note in texts
    assert f"Using the extension's environment: {env.venv_python(own_env(addon))}" in texts
    assert env.PROBE_TIMEOUT <= took < env.PROBE_TIMEOUT + 60, took  # the probe's wait, then a local install
    log = builder.log_path.read_text()
    assert f"Note: {note}\nIndex: {wheel_index} (your pip configuration is kept)\n" in log
    assert "--extra-index-url" not in log and "Retrying" not in log
    assert f"Successfully installed numpy-1.26.4 soundfile-0.12.1 torch-{env.TORCH_VERSION}" in log
    assert f"torch {env.TORCH_VERSION} cuda False" in log  # the last step imported what was installed


def test_while_pip_retries_an_index_the_preferences_say_so_in_words_and_so_does_the_error(addon, clean_env,
                                                                                          silent_index, monkeypatch):
    """Both indexes accept connections and never answer: PyTorch's is left out (noted), pip's retries of the user's
    are shown as a sentence instead of its long WARNING line, and the failure names the index it could not reach."""
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "1")
    monkeypatch.setenv("PIP_RETRIES", "2")
    clean_env.torch_python = ""
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    builder = addon.session.SESSION.environment_builder
    seen, deadline = set(), time.monotonic() + 180
    while not builder.done:
        assert time.monotonic() < deadline, builder.log_path.read_text()
        seen.update(draw_preferences(addon))
        time.sleep(0.05)
    assert "no connection to the index for /simple/pip/ (no answer within pip's timeout): pip tries again (1 left)" \
        in seen, seen
    assert not any("Retrying" in t for t in seen), seen
    assert builder.notes == [f"PyTorch's index is unreachable ({silent_index}/whl/cpu: no answer within "
                             f"{env.PROBE_TIMEOUT:g} s); installing from your own index ({silent_index}/simple)"]
    assert re.fullmatch(rf"installing PyTorch \(cpu\) and the core's requirements failed: Could not find a version "
                        rf"that satisfies the requirement torch=={env.TORCH_VERSION} \(from versions: none\); no "
                        rf"connection to the index for /simple/\w+/ \(no answer within pip's timeout\) "
                        rf"\(see {re.escape(str(builder.log_path))}\)", builder.error), builder.error
    assert "WARNING: Retrying (Retry(total=1" in builder.log_path.read_text()  # the log keeps pip's own words


def test_retry_in_words_reads_each_connection_failure():
    line = ("WARNING: Retrying (Retry(total={}, connect=None, read=None, redirect=None, status=None)) after connection "
            "broken by '{}': /whl/cpu/torch/")
    refused = ("NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f5d>: Failed to "
               "establish a new connection: [Errno 111] Connection refused')")
    unresolved = ("NameResolutionError(\"<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f5d>: Failed "
                  "to resolve 'download.pytorch.org' ([Errno -3] Temporary failure in name resolution)\")")
    assert env.retry_in_words(line.format(0, refused)) == \
        ("no connection to the index for /whl/cpu/torch/ (connection refused)", 0)
    assert env.retry_in_words(line.format(2, unresolved)) == \
        ("no connection to the index for /whl/cpu/torch/ (its name could not be resolved)", 2)
    assert env.retry_in_words("Collecting torch==2.13.0") is None


def test_probe_names_each_way_an_index_is_unreachable(serve, silent_server, tmp_path):
    assert env.unreachable(f"http://127.0.0.1:{free_port()}/whl/cpu") == "the connection was refused"
    began = time.monotonic()
    assert env.unreachable(silent_server + "/whl/cpu", timeout=1) == "no answer within 1 s"
    assert time.monotonic() - began < 3
    assert env.unreachable(serve(tmp_path) + "/no/such/page") is None  # a 404 is an answer: pip judges it
    assert env.unreachable(tmp_path.as_uri()) is None  # a local index needs no network


def test_cancel_stops_pip_and_a_second_create_is_refused(addon, scene, clean_env, silent_index):
    clean_env.torch_python = ""
    assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
    builder = addon.session.SESSION.environment_builder
    wait_for(lambda: running_pip(builder), what="pip to start")  # (stage is set before its process starts)
    pip = builder._proc.pid
    lock = {"owner": os.getpid(), "step": pip, "env": str(own_env(addon))}
    wait_for(lambda: json.loads(builder.lock_path.read_text()) == lock, 10, "the lock to name pip")
    with pytest.raises(RuntimeError, match="already being created: wait for it, or press Cancel"):
        bpy.ops.diffgesture.create_environment()
    with pytest.raises(RuntimeError, match=r"^Error: the torch environment is still being created: wait for Create "
                                           r"Environment to finish \(its progress is in Edit > Preferences"):
        bpy.ops.diffgesture.generate()
    texts = draw_preferences(addon)
    assert "<diffgesture.cancel_environment>" in texts
    assert "The extension's environment is being created (progress below)" in texts  # its python exists already
    assert bpy.ops.diffgesture.cancel_environment() == {"FINISHED"}
    builder.wait(30)
    assert builder.done and builder.error == ("cancelled while updating pip; press Create Environment in "
                                              "Edit > Preferences > Add-ons > DiffGesture to start again")
    assert not env.pid_alive(pip) and not builder.lock_path.exists()
    assert env.venv_python(own_env(addon)).is_file()
    assert "The extension's environment is incomplete (creating it was cancelled): press Create Environment" in \
        draw_preferences(addon)
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


def test_while_another_blender_installs_everything_says_to_wait_and_create_takes_over_when_it_is_gone(
        addon, scene, clean_env, silent_index):
    clean_env.torch_python = ""
    proc, pip = other_blender(addon, own_env(addon))
    try:
        with pytest.raises(RuntimeError, match=rf"Another Blender \(PID {proc.pid}\) is already creating the "
                                               rf"environment in {re.escape(str(own_env(addon)))}: wait for it"):
            bpy.ops.diffgesture.create_environment()
        wait = (f"another Blender (PID {proc.pid}) is creating the torch environment: wait for it to finish there, "
                "then try again")
        with pytest.raises(RuntimeError, match=f"^Error: {re.escape(wait)}\\. Nothing was changed"):
            bpy.ops.diffgesture.generate()
        assert run_check(addon) == [f"Check failed: {wait}"]
        assert (f"Another Blender (PID {proc.pid}) is creating the extension's environment: wait for it to finish"
                in draw_preferences(addon))
        proc.kill()  # that Blender crashed: its pip goes on alone
        proc.wait()
        assert env.pid_alive(pip)
        assert bpy.ops.diffgesture.create_environment() == {"FINISHED"}
        builder = addon.session.SESSION.environment_builder
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
    assert addon.session.SESSION.worker.check_report() == []  # that Check described the other interpreter
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
