#!/usr/bin/env python3
"""One entry point for the project's tasks: set up, demo, test, build the extension, benchmark, train.

Everything runs offline from package registries only. Virtual environments are made under .envs/:
`torch` (model_core, its worker, training), `blender` (real Blender 4.5 LTS as the bpy module, never torch) and
`blender5` (Blender 5.0, for the tests), mirroring how the add-on keeps torch out of Blender's process.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ENVS = ROOT / ".envs"
DIST = ROOT / "dist"
OUT = ROOT / "out"
APT_PACKAGES = [
    "espeak-ng", "sox", "ffmpeg",
    "flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts",  # procedural speech voices
    # shared libraries behind the bpy wheel (BLENDER_NOTES.md), and Mesa for Workbench renders
    "libx11-6", "libxrender1", "libxfixes3", "libxi6", "libxkbcommon0", "libsm6", "libgl1",
    "libegl1", "libegl-mesa0", "libgl1-mesa-dri",
]
ENV_REQUIREMENTS = {"torch": ROOT / "requirements" / "torch.txt", "blender": ROOT / "requirements" / "blender.txt",
                    "blender5": ROOT / "requirements" / "blender5.txt",
                    # pyarrow 11 (Python <= 3.11, numpy < 2): the reader of the official TED LMDB files only
                    "ted_lmdb": ROOT / "requirements" / "ted_lmdb.txt"}
MAIN_ENVS = ("torch", "blender", "blender5")
NUMPY1_REQUIREMENTS = ROOT / "requirements" / "numpy1.txt"
# (environment, folder) pairs that make up the test suite: the add-on suite runs on Blender 4.5 LTS and 5.0.
TEST_SUITES = [("torch", "addon_tests/core"), ("blender", "addon_tests/blender"), ("blender5", "addon_tests/blender")]
# Files of the repository that go into the extension zip besides the add-on package itself.
EXTENSION_EXTRA = ["model_core", "blender_manifest.toml", "LICENSE"]
# The environment that gets this repository's package (pyproject.toml) installed, editable, with its training extra:
# its bin/ then holds the `diffgesture`, `diffgesture-train` and `diffgesture-evaluate` commands.
PROJECT_ENV = "torch"
HEARTBEAT_S = 15  # a set-up step that prints nothing says it is still working this often
# apt and dpkg's lock files (apt-get update takes the lists lock, install the others), and how long set-up waits
# for another package manager (unattended-upgrades, a second terminal) to let go of them.
APT_LOCKS = tuple(Path(p) for p in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
                                    "/var/cache/apt/archives/lock"))
APT_LOCK_WAIT_S = 600
# The lines of pip's and apt's output that show progress; the rest is dropped (and shown if the step fails).
# pip's retries are kept: they are what a slow or unreachable index looks like.
PIP_PROGRESS = ("Collecting", "Downloading", "Processing", "Obtaining", "Building", "Installing collected",
                "Successfully", "ERROR", "WARNING: Retrying")
APT_PROGRESS = ("Get:", "Setting up", "E:", "W:", "Err:")


def run(cmd: list[str | Path], **kw) -> None:
    """Run a command, echoing it, and stop the build with its exit code if it fails."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    rc = subprocess.call([str(c) for c in cmd], **kw)
    if rc:
        sys.exit(rc)


def duration(seconds: float) -> str:
    """Seconds as a person reads them: "8.2 s", "2 min 05 s"."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{seconds:.1f} s"


def _read_lines(stream, lines: queue.Queue) -> None:
    """Hand a process's output over line by line, then None."""
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def run_step(title: str, cmd: list[str | Path], show=lambda line: line, **kw) -> tuple[int, list[str]]:
    """Run one set-up command under a title, never silently (a CI log included): its output lines as `show` words
    them (None: not shown), a line every HEARTBEAT_S while none is shown, and at the end its duration, or on
    failure its last lines; (exit code, every output line)."""
    cmd = [str(c) for c in cmd]
    print(f"== {title}\n   + {' '.join(cmd)}", flush=True)
    start = shown = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            **kw)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    output = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, shown + HEARTBEAT_S - time.monotonic()))
        except queue.Empty:
            print(f"   ... still {title.split(':')[0]}, {duration(time.monotonic() - start)} so far", flush=True)
            shown = time.monotonic()
            continue
        if line is None:
            break
        output.append(line)
        if (shown_line := show(line)) is not None:
            print(f"   {shown_line}", flush=True)
            shown = time.monotonic()
    rc = proc.wait()
    if rc:
        tail = "\n".join(f"   | {line}" for line in output[-20:])
        print(f"   failed (exit {rc}) after {duration(time.monotonic() - start)}; its last lines:\n{tail}", flush=True)
    else:
        print(f"   done in {duration(time.monotonic() - start)}", flush=True)
    return rc, output


def step(title: str, cmd: list[str | Path], show=lambda line: line, **kw) -> list[str]:
    """run_step that stops the build with the command's exit code if it fails; its output lines."""
    rc, output = run_step(title, cmd, show, **kw)
    if rc:
        sys.exit(rc)
    return output


def pip_install(python: Path, title: str, args: list[str | Path]) -> None:
    """`pip install ARGS` into an environment as a step showing what pip collects, downloads and installs."""
    step(title, [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *args],
         show=pip_progress)


def pip_progress(line: str) -> str | None:
    """A line of pip's that shows progress, without the "(from REQUIREMENT ...)" that says why; else None."""
    return re.sub(r" \(from .*\)$", "", line) if line.startswith(PIP_PROGRESS) else None


def requirement_lines(req: Path) -> list[str]:
    """The requirements of a requirements file, without its comments."""
    return [line.split("#")[0].strip() for line in req.read_text().splitlines() if line.split("#")[0].strip()]


def lock_holders(paths: tuple[Path, ...] = APT_LOCKS) -> dict[Path, str]:
    """The lock files among `paths` that a process holds now, each with who holds it, from /proc/locks (the fcntl
    locks apt and dpkg take)."""
    ids = {}
    for path in paths:
        if path.exists():
            st = path.stat()
            ids[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = path
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return {}
    held = {}
    for fields in (line.split() for line in table.splitlines()):
        if len(fields) > 5 and "->" not in fields and fields[5] in ids:  # "->": a process waiting, not holding
            held[ids[fields[5]]] = describe_process(fields[4])
    return held


def describe_process(pid: str) -> str:
    """"process 123 (apt-get install ...)", or "another process" when its id or command line cannot be read."""
    try:
        args = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (ValueError, OSError):
        return "another process"
    command = " ".join(a.decode(errors="replace") for a in args if a)
    return f"process {pid} ({command[:80]})" if command else f"process {pid}"


def wait_for_apt_locks(title: str, deadline: float) -> None:
    """Before the step `title`: wait, saying what for and whom, while another package manager holds apt's or dpkg's
    locks; stop the build when they are still held at `deadline`."""
    said, last = "", 0.0
    while held := lock_holders():
        now = time.monotonic()
        what = "; ".join(f"{path}, held by {who}" for path, who in held.items())
        if now >= deadline:
            sys.exit(f"gave up after {duration(APT_LOCK_WAIT_S)} waiting for {what}: let that package manager "
                     f"finish (or stop it), then run this again")
        if what != said or now - last >= HEARTBEAT_S:
            print(f"== waiting for {what}: another package manager is at work; waiting up to "
                  f"{duration(deadline - now)} more before {title}", flush=True)
            said, last = what, now
        time.sleep(0.5)


def apt_get(args: list[str], title: str = "", env: dict[str, str] | None = None) -> None:
    """`apt-get ARGS` that waits up to APT_LOCK_WAIT_S for apt's and dpkg's locks instead of failing with exit 100
    when another package manager runs; stops the build if it fails otherwise."""
    title = title or f"apt-get {' '.join(args)}"
    deadline = time.monotonic() + APT_LOCK_WAIT_S
    while True:
        wait_for_apt_locks(title, deadline)
        # apt waits for dpkg's lock itself (DPkg::Lock::Timeout) but not for the lists lock of `update` (apt 2.6)
        timeout = max(1, round(deadline - time.monotonic()))
        rc, output = run_step(title, ["apt-get", "-q", "-o", f"DPkg::Lock::Timeout={timeout}", *args],
                              show=lambda line: line if line.startswith(APT_PROGRESS) else None,
                              env=env)
        if rc == 100 and any("Could not get lock" in line for line in output) and time.monotonic() < deadline:
            print("   another package manager took the lock first: waiting again", flush=True)
            continue
        if rc:
            sys.exit(rc)
        return


def env_python(name: str) -> Path:
    return ENVS / name / "bin" / "python"


def setup_system() -> None:
    """Install the Debian packages the project needs (espeak-ng for speech, ffmpeg, Blender's libraries)."""
    missing = [p for p in APT_PACKAGES
               if subprocess.call(["dpkg", "-s", p], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"missing system packages {missing}: install them with apt-get (needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt_get(["update"], "updating the package lists (apt-get update)", env)
    apt_get(["install", "-y", "--no-install-recommends", *missing],
            f"installing system packages: {', '.join(missing)}", env)


def _fresh(source: Path, stamp: Path) -> tuple[bool, str]:
    """Whether what `stamp` records was installed from `source` as it is now: (fresh, digest)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return stamp.exists() and stamp.read_text() == digest, digest


def setup_env(name: str, base: str = sys.executable) -> Path:
    """Create (or refresh when its requirements changed) one virtual environment from `base`; return its
    interpreter."""
    py, req = env_python(name), ENV_REQUIREMENTS[name]
    stamp = ENVS / name / ".requirements.sha256"
    fresh, digest = _fresh(req, stamp)
    if not (py.exists() and fresh):
        step(f"creating .envs/{name}", [base, "-m", "venv", "--clear", ENVS / name])
        pip_install(py, f"installing .envs/{name} from {req.relative_to(ROOT)}: {', '.join(requirement_lines(req))}",
                    ["-r", req])
        stamp.write_text(digest)
    if name == PROJECT_ENV:
        setup_project(py)
    return py


def install_project(python: Path, extras: str = "train") -> None:
    """Install this repository's package editable into an environment that holds its dependencies (nothing is
    downloaded): its commands then run from any folder, on this checkout's code."""
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    pip_install(python, f"installing the diffgesture package (editable, {target}) into {python.parent.parent}",
                ["--no-build-isolation", "-e", target])


def setup_project(python: Path) -> None:
    """install_project into the environment, again only when pyproject.toml changed or its command is missing."""
    stamp = python.parent.parent / ".project.sha256"
    fresh, digest = _fresh(ROOT / "pyproject.toml", stamp)
    if not (fresh and (python.parent / "diffgesture").exists()):
        install_project(python)
        stamp.write_text(digest)


def setup_numpy1(torch_python: Path) -> Path:
    """numpy 1.26 in a folder that, put first on the torch env's path, replaces its numpy 2 (for the tests that
    official checkpoints load under both numpy lines)."""
    folder = ENVS / "numpy1"
    stamp = folder / ".requirements.sha256"
    fresh, digest = _fresh(NUMPY1_REQUIREMENTS, stamp)
    if not fresh:
        shutil.rmtree(folder, ignore_errors=True)
        pip_install(torch_python, f"installing .envs/numpy1 from {NUMPY1_REQUIREMENTS.relative_to(ROOT)}: "
                                  f"{', '.join(requirement_lines(NUMPY1_REQUIREMENTS))}",
                    ["--target", folder, "-r", NUMPY1_REQUIREMENTS])
        stamp.write_text(digest)
    return folder


# Third-party readers the export tests check files with, pinned: the Khronos glTF validator and a pure-Python BVH
# parser other than Blender's
GLTF_VALIDATOR = "gltf-validator@2.0.0-dev.3.10"
BVH_PARSER = "bvh==0.3"


def setup_checkers(python: Path) -> None:
    """The glTF validator (npm, into .envs/npm) and the BVH parser (PyPI, into .envs/bvhparse), each in its own
    folder; a note, not a failure, when one cannot be installed: the tests that need it then skip and say why."""
    installs = {ENVS / "npm": ["npm", "install", "--no-audit", "--no-fund", "--prefix", ENVS / "npm", GLTF_VALIDATOR],
                ENVS / "bvhparse": [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                                    ENVS / "bvhparse", BVH_PARSER]}
    for folder, cmd in installs.items():
        stamp = folder / ".checker"
        if stamp.exists() and stamp.read_text() == cmd[-1]:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if shutil.which(str(cmd[0])) is None or subprocess.call([str(c) for c in cmd]) != 0:
            print(f"note: {cmd[-1]} could not be installed into {folder}; the tests that check files with it skip")
            continue
        stamp.write_text(cmd[-1])


def setup(names: tuple[str, ...] = MAIN_ENVS) -> dict[str, Path]:
    """System packages and the named environments (all by default; the demo needs only torch and blender)."""
    setup_system()
    return {name: setup_env(name) for name in names}


def setup_lmdb_env() -> Path | None:
    """The pinned pyarrow-11 environment for the TED LMDB reader, from a Python <= 3.11 (this one or one on PATH);
    None, with a note, when there is no such Python."""
    base = sys.executable if sys.version_info[:2] <= (3, 11) else None
    for version in ("3.11", "3.10", "3.9"):
        base = base or shutil.which(f"python{version}")
    if base is None:
        print("note: pyarrow 11 (the TED LMDB reader) needs Python 3.9-3.11, and none was found on PATH")
        return None
    return setup_env("ted_lmdb", base)


def test_environ(envs: dict[str, Path]) -> dict[str, str]:
    """Environment for test runs: the repo importable, the worker interpreter known, Blender's prefs private."""
    return dict(os.environ, PYTHONPATH=str(ROOT), DIFFGESTURE_TORCH_PYTHON=str(envs["torch"]),
                DIFFGESTURE_BLENDER_PYTHON=str(envs["blender"]), DIFFGESTURE_NUMPY1=str(ENVS / "numpy1"),
                PYTHONDONTWRITEBYTECODE="1")


def cmd_setup(args) -> None:
    setup()


def cmd_test(args) -> None:
    """Run the core/training suite in the torch environment, then the add-on suite on Blender 4.5 and 5.0."""
    envs = setup()
    setup_numpy1(envs["torch"])
    setup_checkers(envs["torch"])
    if not args.no_extension:
        build_extension()
    env = test_environ(envs)
    lmdb_python = setup_lmdb_env()  # for addon_tests/core/test_ted_lmdb.py, which skips without it
    if lmdb_python:
        env["DIFFGESTURE_LMDB_PYTHON"] = str(lmdb_python)
    reports = OUT / "test-reports"
    reports.mkdir(parents=True, exist_ok=True)
    results, totals = [], {"passed": 0, "failed": 0, "skipped": 0}
    for name, folder in TEST_SUITES:
        print(f"== {folder} in .envs/{name}", flush=True)
        xml = reports / f"{name}-{Path(folder).name}.xml"
        xml.unlink(missing_ok=True)
        rc = subprocess.call([str(envs[name]), "-m", "pytest", "-q", folder, f"--junitxml={xml}", *args.pytest_args],
                             cwd=ROOT, env=env)
        results.append((f"{folder} ({name})", rc))
        for key, value in junit_counts(xml).items():
            totals[key] += value
    print("test suites:", ", ".join(f"{f}: {'ok' if rc == 0 else f'exit {rc}'}" for f, rc in results))
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    sys.exit(1 if any(rc != 0 for _, rc in results) or not totals["passed"] else 0)


def junit_counts(xml: Path) -> dict[str, int]:
    """Passed / failed (errors included) / skipped (xfail included) counts from a pytest JUnit report."""
    if not xml.exists():
        return {"passed": 0, "failed": 1, "skipped": 0}  # the suite did not even report: count it as a failure
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": tests - failed - skipped, "failed": failed, "skipped": skipped}


def source_files(src: Path) -> list[Path]:
    """A file, or the files under a folder in name order, without Python's caches."""
    files = sorted(src.rglob("*")) if src.is_dir() else [src]
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def build_extension() -> Path:
    """Assemble dist/diffgesture-<version>.zip: the add-on at the zip root, model_core and the default checkpoint."""
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    DIST.mkdir(exist_ok=True)
    target = DIST / f"diffgesture-{manifest['version']}.zip"
    addon = ROOT / "diffgesture_blender"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in source_files(addon):
            zf.write(path, path.relative_to(addon))
        for extra in EXTENSION_EXTRA:
            for path in source_files(ROOT / extra):
                zf.write(path, path.relative_to(ROOT))
    print(f"built {target.relative_to(ROOT)} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def cmd_extension(args) -> None:
    build_extension()


def cmd_demo(args) -> None:
    """Generate gestures for the example speech on the demo character, save the .blend and render a preview."""
    envs = setup(("torch", "blender"))  # Blender 5.0 (blender5) is only for the tests
    env = test_environ(envs)
    run([envs["blender"], ROOT / "examples" / "run_demo.py", "--torch-python", envs["torch"],
         "--out", args.out, *(["--no-render"] if args.no_render else [])], cwd=ROOT, env=env)


def cmd_bench(args) -> None:
    """Run the benchmarks; each prints a table and appends it to benchmarks/RESULTS.md."""
    envs = setup()
    env = test_environ(envs)
    run([envs["torch"], "-m", "benchmarks.core", *args.bench_args], cwd=ROOT, env=env)


# The demo's procedural data (training/configs/demo.toml reads these folders): split -> (clips, seed).
DEMO_DATA = {"train": (720, 0, "train"), "val": (24, 1, "train"), "val_voice": (12, 2, "held-out")}


def cmd_train_demo(args) -> None:
    """Train the bundled demo checkpoint on the procedural dataset (made first when missing; resumable)."""
    envs = setup()
    env = test_environ(envs)
    for split, (clips, seed, voices) in DEMO_DATA.items():  # --keep: made again only when missing or another recipe
        run([envs["torch"], "-m", "training.procedural", ROOT / "runs" / "data" / "procedural_ted_gesture" / split,
             "--clips", clips, "--seed", seed, "--voices", voices, "--jobs", os.cpu_count() or 1, "--keep"],
            cwd=ROOT, env=env)
    run([envs["torch"], "-m", "training.train", "--config", "training/configs/demo.toml", *args.train_args],
        cwd=ROOT, env=env)


def cmd_convert_ted(args) -> None:
    """Convert an official TED LMDB (pyarrow.serialize records) into the project's clip format."""
    torch_python = setup_env("torch")
    lmdb_python = setup_lmdb_env()
    if lmdb_python is None:
        sys.exit("convert-ted needs a Python 3.9-3.11 interpreter for pyarrow 11 (install python3.11)")
    run([torch_python, "-m", "training.data", Path(args.src).resolve(), Path(args.out).resolve(),
         "--skeleton", args.skeleton, "--legacy-python", lmdb_python], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install system packages and the virtual environments").set_defaults(fn=cmd_setup)
    p = sub.add_parser("test", help="set up, build the extension, run the whole test suite")
    p.add_argument("--no-extension", action="store_true", help="do not rebuild the extension zip first")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    p.set_defaults(fn=cmd_test)
    p = sub.add_parser("demo", help="set up and run the main job on the embedded default")
    p.add_argument("--out", default=str(OUT / "demo"), help="output folder (default out/demo)")
    p.add_argument("--no-render", action="store_true", help="skip the PNG/MP4 preview")
    p.set_defaults(fn=cmd_demo)
    sub.add_parser("extension", help="build dist/diffgesture-<version>.zip").set_defaults(fn=cmd_extension)
    p = sub.add_parser("bench", help="run the benchmarks and record their tables")
    p.add_argument("bench_args", nargs="*")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("train-demo", help="train the demo checkpoint on the procedural dataset")
    p.add_argument("train_args", nargs="*")
    p.set_defaults(fn=cmd_train_demo)
    p = sub.add_parser("convert-ted", help="convert an official TED LMDB (pyarrow 0.14) to the clip format")
    p.add_argument("src", help="the LMDB folder, e.g. ted_dataset/lmdb_train")
    p.add_argument("out", help="output dataset folder, e.g. runs/data/ted_gesture/train")
    p.add_argument("--skeleton", required=True, choices=["ted_gesture", "ted_expressive"])
    p.set_defaults(fn=cmd_convert_ted)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
