"""Set-up and installation: the package's commands from any folder in the add-on's environment, build.py's steps
(never silent, timed) and its apt wrapper waiting for a held dpkg lock."""
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from addon_tests.paths import FIXTURES, ROOT

sys.path.insert(0, str(ROOT))
import build  # noqa: E402


def addon_environment():
    """The add-on's environment module (pure logic: stdlib only), loaded without its package, which needs bpy."""
    spec = importlib.util.spec_from_file_location("addon_environment", ROOT / "diffgesture_blender" / "environment.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# the distributions the add-on's Create Environment installs (torch, numpy, soundfile)
ADDON_PACKAGES = tuple(Requirement(p).name for p in addon_environment().Plan("cpu", "").packages)

# What `pip install .` builds from: the package's sources and the files pyproject.toml names.
PACKAGE_SOURCES = ["pyproject.toml", "README.md", "LICENSE", "model_core", "training"]


def closure(names: tuple[str, ...]) -> set[str]:
    """The installed distributions `names` need here, their own requirements included (extras and markers that do
    not apply left out)."""
    seen, todo = set(), list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def expose(dists: set[str], site: Path) -> None:
    """Symlink the top-level files of each distribution (its modules, libraries and .dist-info) into `site`."""
    for name in dists:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            target = Path(dist.locate_file(top))
            if not (site / top).exists():
                (site / top).symlink_to(target)


def addon_like_venv(folder: Path) -> Path:
    """A virtual environment holding what the add-on's environment holds (torch, numpy, soundfile and what they
    need, linked from this one, so nothing is downloaded) and the pip every venv has; its python."""
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists = closure(ADDON_PACKAGES)
    # torch needs a newer setuptools than a new venv brings: pip replaces it in the add-on's environment, so here
    bundled = [name for name in ("pip", "setuptools") if name in dists]
    if bundled:
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", *bundled], check=True)
    expose(dists, site)
    return python


def clean_env() -> dict[str, str]:
    """This process's environment without the repository on the path: the commands must find their own code."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def pip_install(python: Path, *args) -> None:
    """pip as the tests need it: offline, no dependency resolution (the environment already holds them)."""
    out = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                          "--no-deps", "--no-build-isolation", *map(str, args)], capture_output=True, text=True,
                         env=clean_env())
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A copy of the package installed (`pip install .`) into an add-on-like environment: its bin folder."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    for name in PACKAGE_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    python = addon_like_venv(base / "venv")
    pip_install(python, src)
    return python.parent


def cli(bin_dir: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    """Run an installed command from `cwd` with nothing of the repository on the path."""
    return subprocess.run([bin_dir / "diffgesture", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=clean_env(), timeout=600)


def test_the_environment_holds_only_what_the_addon_installs(installed):
    """The test's environment is the add-on's: scipy, librosa, tqdm and the repository itself are not importable."""
    probe = ("import importlib.util as u; print([m for m in ('torch', 'numpy', 'soundfile', 'scipy', 'librosa', "
             "'tqdm', 'lmdb', 'build', 'addon_tests') if u.find_spec(m)])")
    out = subprocess.run([installed / "python", "-c", probe], capture_output=True, text=True, cwd=installed,
                         env=clean_env(), check=True)
    assert out.stdout.strip() == "['torch', 'numpy', 'soundfile']"


def test_every_command_runs_from_any_folder(installed, tmp_path):
    """convert, info (of a file and of the bundled default), generate (.npz and .bvh), reroll and generate-batch
    through the installed `diffgesture` command, from a folder outside the repository."""
    work = tmp_path / "elsewhere"
    (work / "clips").mkdir(parents=True)
    subprocess.run(["espeak-ng", "-w", str(work / "clips" / "hello.wav"), "Hands follow the voice."], check=True)

    out = cli(installed, work, "convert", FIXTURES / "ted_small_checkpoint.bin", "ted.pt")
    assert out.returncode == 0 and (work / "ted.pt").exists(), out.stderr
    out = cli(installed, work, "info", "ted.pt")
    assert out.returncode == 0 and "ted_gesture" in out.stdout, out.stderr
    out = cli(installed, work, "info", "default")  # the bundled checkpoint, installed as package data
    assert out.returncode == 0 and "demo_ted_gesture.pt" in out.stdout, out.stderr

    common = ["--checkpoint", "ted.pt", "--device", "cpu", "--steps", "2"]
    out = cli(installed, work, "generate", "clips/hello.wav", "-o", "take.npz", *common)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["output"] == "take.npz"
    with np.load(work / "take.npz") as take:
        frames = len(take["directions"])
    out = cli(installed, work, "generate", "clips/hello.wav", "-o", "take.bvh", *common)
    assert out.returncode == 0 and (work / "take.bvh").read_text().startswith("HIERARCHY"), out.stderr

    out = cli(installed, work, "reroll", "take.npz", "--range", "5", "15", "--seed", "3", "-o", "new.npz",
              "--checkpoint", "ted.pt", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    with np.load(work / "new.npz") as new:
        assert len(new["directions"]) == frames
    # from another folder the take still finds its speech: generate recorded where the audio is, not how it was typed
    out = cli(installed, tmp_path, "reroll", work / "take.npz", "--range", "5", "15", "-o", work / "again.npz",
              "--checkpoint", work / "ted.pt", "--device", "cpu")
    assert out.returncode == 0, out.stderr

    out = cli(installed, work, "generate-batch", "clips", "batch", *common)
    assert out.returncode == 0, out.stderr
    assert (work / "batch" / "hello.npz").exists()


def test_build_installs_the_package_editable(tmp_path):
    """build.py's own install step, into a fresh add-on-like environment: the command it leaves runs from any
    folder, on the repository's code."""
    python = addon_like_venv(tmp_path / "venv")
    build.install_project(python, extras="")
    out = cli(python.parent, tmp_path, "info", "default")
    assert out.returncode == 0 and str(ROOT / "model_core" / "weights") in out.stdout, out.stderr


def test_the_package_declares_what_the_addon_and_the_torch_environment_install():
    """pyproject.toml's dependencies are the add-on environment's packages (so every command runs there), and
    requirements/torch.txt pins all of them and the training extra (so build.py's install downloads nothing)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    train = {Requirement(r).name for r in project["optional-dependencies"]["train"]}
    pinned = {Requirement(r).name for r in build.requirement_lines(build.ENV_REQUIREMENTS[build.PROJECT_ENV])}
    assert core == set(ADDON_PACKAGES)
    assert core | train <= pinned


def test_a_step_shows_its_command_a_heartbeat_and_its_duration(capsys, monkeypatch):
    """A silent command still prints a line every heartbeat interval, and the step ends with its duration."""
    monkeypatch.setattr(build, "HEARTBEAT_S", 0.5)
    start = time.monotonic()
    lines = build.step("waiting for a slow tool", ["sh", "-c", "sleep 2; echo noise; echo kept line"],
                       show=lambda line: line.upper() if line.startswith("kept") else None)
    assert time.monotonic() - start >= 2
    out = capsys.readouterr().out
    assert out.startswith("== waiting for a slow tool")
    assert out.count("still waiting for a slow tool") >= 2
    assert "\n   KEPT LINE\n" in out and "\n   noise" not in out
    assert lines == ["noise", "kept line"]
    assert out.rstrip().splitlines()[-1].startswith("   done in ")


def test_a_failing_step_stops_the_build_with_its_exit_code():
    with pytest.raises(SystemExit) as stop:
        build.step("failing on purpose", ["sh", "-c", "echo boom; exit 3"])
    assert stop.value.code == 3


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"),
                    reason="needs root and apt-get")
def test_apt_waits_for_a_held_dpkg_lock_then_goes_on(capsys):
    """A process holds dpkg's frontend lock as apt does (fcntl) for a few seconds: the wrapper says what it waits
    for and who holds it, then runs apt-get, which succeeds."""
    package = "espeak-ng"  # installed by the set-up: installing it again changes nothing
    if subprocess.call(["dpkg", "-s", package], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        pytest.skip(f"{package} is not installed")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open('/var/lib/dpkg/lock-frontend', 'a'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(4)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        build.apt_get(["install", "-y", "--no-install-recommends", package])
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out
    assert "waiting for /var/lib/dpkg/lock-frontend" in out and f"process {holder.pid}" in out
    assert waited >= 2  # it waited for the holder rather than failing with apt's exit 100
    assert "done in" in out
