"""The isolated torch environment: which PyTorch build fits this machine, creating it without blocking Blender, and
saying in one sentence what is wrong with an interpreter that cannot run the worker.

Pure logic (no bpy): `gpu_info` asks nvidia-smi, `pip_plan` turns that into install commands, `EnvironmentBuilder`
runs them in a thread (one installer per folder, guarded by a lock file; PyTorch's index is dropped, with a note,
when it does not answer within seconds) and writes everything to a readable log file that the preferences show;
`own_state` says in a sentence whether the environment is ready, being created or incomplete; `diagnose` names the
missing interpreter or packages and what to press.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TORCH_VERSION = "2.13.0"  # the version model_core is tested with (requirements/torch.txt)
CORE_REQUIREMENTS = ["numpy>=1.26", "soundfile>=0.12"]
WORKER_MODULES = ("numpy", "torch", "soundfile")  # what the worker imports from the environment
# PyTorch's own index (its +cpu / +cuXXX builds live only there); DIFFGESTURE_TORCH_INDEX names a mirror of it.
TORCH_INDEX = "https://download.pytorch.org/whl/"
PREFERENCES_PATH = "Edit > Preferences > Add-ons > DiffGesture"
CREATE_HINT = f"press Create Environment in {PREFERENCES_PATH}"
PROBE_TIMEOUT = 5.0  # seconds PyTorch's index has to answer before the install goes on without it
LOG_FINISHED, LOG_FAILED = "== finished", "== FAILED: "  # the log's last line once a build has ended


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it."""
    name: str
    compute_capability: tuple[int, int]
    driver_major: int


@dataclass
class Plan:
    """What to install: the PyTorch wheel index (cpu, cu126, cu128) and why it was chosen."""
    variant: str
    reason: str
    packages: list[str] = field(default_factory=lambda: [f"torch=={TORCH_VERSION}", *CORE_REQUIREMENTS])

    @property
    def index_url(self) -> str:
        return os.environ.get("DIFFGESTURE_TORCH_INDEX", TORCH_INDEX).rstrip("/") + "/" + self.variant

    @property
    def needs_torch_index(self) -> bool:
        """PyPI's torch is the right build on macOS; elsewhere the cpu/CUDA variants come from PyTorch's index."""
        return sys.platform != "darwin"

    def pip_args(self, user_extra_indexes: list[str] = (), torch_index: bool = True) -> list[str]:
        """Arguments after `python -m pip`: the user's own index (pip's configuration, PyPI by default) stays the
        main one; PyTorch's index is added as an extra (unless torch_index is False: it did not answer), after the
        user's extras (a command-line option replaces the configured one, so those are repeated)."""
        extras = [*user_extra_indexes, *([self.index_url] if self.needs_torch_index and torch_index else [])]
        return ["install", "--disable-pip-version-check",
                *(arg for url in extras for arg in ("--extra-index-url", url)), *self.packages]


def pip_plan(gpus: list[Gpu]) -> Plan:
    """Choose the PyTorch build for the best GPU: CUDA 12.8 from Turing (7.5) on, 12.6 for Maxwell..Volta, else CPU."""
    if not gpus:
        return Plan("cpu", "no NVIDIA GPU found: installing the CPU build")
    gpu = max(gpus, key=lambda g: g.compute_capability)
    cc = ".".join(map(str, gpu.compute_capability))
    if gpu.compute_capability < (5, 0):
        return Plan("cpu", f"{gpu.name} (compute capability {cc}) is too old for current PyTorch: using the CPU")
    if gpu.driver_major < 525:
        return Plan("cpu", f"the NVIDIA driver {gpu.driver_major} is older than 525 (CUDA 12): update it to use "
                           f"{gpu.name}; installing the CPU build for now")
    if gpu.compute_capability >= (7, 5) and gpu.driver_major >= 570:
        return Plan("cu128", f"{gpu.name} (compute capability {cc}): CUDA 12.8 build")
    why = "driver older than 570" if gpu.compute_capability >= (7, 5) else "pre-Turing GPU"
    return Plan("cu126", f"{gpu.name} (compute capability {cc}, {why}): CUDA 12.6 build")


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        name, cap, driver = parts
        try:
            major, minor = (int(x) for x in cap.split("."))
            gpus.append(Gpu(name, (major, minor), int(driver.split(".")[0])))
        except ValueError:
            continue
    return gpus


def gpu_info() -> list[Gpu]:
    """The NVIDIA GPUs of this machine; [] without nvidia-smi or a working driver."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def venv_python(env_dir: str | Path) -> Path:
    """The interpreter inside a virtual environment folder."""
    env_dir = Path(env_dir)
    return env_dir / "Scripts" / "python.exe" if os.name == "nt" else env_dir / "bin" / "python"


def base_python() -> str:
    """A Python that can make a venv: Blender's own (sys.executable is its bundled interpreter)."""
    return sys.executable


def clean_env() -> dict[str, str]:
    """The environment for another interpreter: without Blender's PYTHONHOME/PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}


# -- what is wrong with an interpreter ------------------------------------------------------------------------
def missing_modules(python: str | Path) -> list[str] | str:
    """The worker's modules that `python` cannot import (found by name, nothing is imported), or why it cannot run."""
    code = ("import importlib.util as u; print(' '.join(m for m in %r if u.find_spec(m) is None))"
            % (WORKER_MODULES,))
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    return out.stdout.split()


def diagnose(python: str | Path, own: bool, remedy: str = "") -> str | None:
    """One sentence on why `python` cannot run the worker, with what to do; None when nothing is missing.

    own: the interpreter is the extension's environment (not one the user chose). remedy: replaces the advice
    (the headless command names --torch-python instead of the preferences)."""
    python = Path(python)
    builder = installer(python.parent.parent) if own else None  # venv_python: the folder's bin/python
    if builder == os.getpid():
        return f"the torch environment is still being created: wait for Create Environment to finish (its " \
               f"progress is in {PREFERENCES_PATH})"
    if builder is not None:
        return f"another Blender (PID {builder}) is creating the torch environment: wait for it to finish there, " \
               "then try again"
    if not python.exists():
        problem = ("there is no torch environment yet" if own else f"the Torch Python {python} does not exist")
        advice = CREATE_HINT if own else f"correct or clear Torch Python in {PREFERENCES_PATH} (cleared, the " \
                                         "extension's own environment is used: Create Environment makes it)"
        return f"{problem}: {remedy or advice}"
    missing = missing_modules(python)
    if isinstance(missing, str):
        return f"{python} cannot run ({missing}): {remedy or (CREATE_HINT if own else 'choose another Torch Python')}"
    if not missing:
        return None
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    if own:
        return f"the torch environment lacks {names} (its creation failed or did not finish): " \
               f"{remedy or CREATE_HINT} again"
    advice = f"install them into it (torch=={TORCH_VERSION}), or clear Torch Python and {CREATE_HINT}"
    return f"the Torch Python {python} lacks {names}: {remedy or advice}"


def pip_config(python: str | Path) -> dict[str, str]:
    """pip's configured options (PIP_* variables, pip.conf) as `python`'s pip sees them, by pip's precedence:
    environment variables, then the install command's section, then [global]; {} when pip cannot say."""
    try:
        out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return {}
    values: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep:
            values.setdefault(name, {})[section] = value.strip().strip("'\"")
    order = (":env:", "install", "global")
    return {n: next(v[s] for s in order if s in v) for n, v in values.items() if any(s in v for s in order)}


def user_indexes(config: dict[str, str]) -> tuple[str | None, list[str]]:
    """The index and extra indexes of pip's configuration (pip_config): (index-url or None for PyPI, [extras])."""
    return config.get("index-url"), config.get("extra-index-url", "").split()


def unreachable(url: str, proxy: str | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why an http(s) index cannot be reached within `timeout` seconds (name not found, refused, no answer), in
    words; None once anything answers (an error status or a certificate problem included: pip judges those).
    proxy: pip's own (its configuration); the proxy variables of the environment apply as for pip."""
    if not url.startswith(("http://", "https://")):
        return None  # a local (file:) index: pip reads it without the network
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({"http": proxy, "https": proxy})]
                                           if proxy else []))
    why: list[str | None] = [f"no answer within {timeout:g} s"]  # stays so when even the name lookup hangs

    def probe() -> None:
        try:
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            why[0] = None
        except urllib.error.HTTPError:
            why[0] = None
        except urllib.error.URLError as e:
            why[0] = None if isinstance(e.reason, ssl.SSLError) else _in_words(e.reason, timeout)
        except OSError as e:  # a timeout while reading the answer
            why[0] = _in_words(e, timeout)
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return why[0]


def _in_words(reason: object, timeout: float) -> str:
    """A socket error as a few words: the name, a refusal, a timeout, or the system's own text."""
    if isinstance(reason, socket.gaierror):
        return "its name could not be resolved"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    return getattr(reason, "strerror", None) or str(reason)


# -- the state of the extension's environment ---------------------------------------------------------------
def lock_path(env_dir: str | Path) -> Path:
    """The lock file beside the folder while a Blender creates the environment in it."""
    return Path(env_dir).parent / "torch-env.lock"


def log_path(env_dir: str | Path) -> Path:
    """The log of the last Create Environment for the folder."""
    return Path(env_dir).parent / "torch-env-install.log"


def installer(env_dir: str | Path) -> int | None:
    """The PID of the Blender creating the environment in `env_dir` now (this one included), from its lock; None
    when none is (no lock, or one left by a Blender that is gone)."""
    lock = lock_path(env_dir)
    try:
        owner = json.loads(lock.read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None
    if owner == os.getpid():  # else a lock left by an earlier process that had this PID
        return owner if building_here(env_dir) else None
    return owner if isinstance(owner, int) and pid_alive(owner) else None


def building_here(env_dir: str | Path) -> bool:
    """Whether a builder of this process is creating the environment in `env_dir`: its thread, named after the
    folder's lock, is alive. Python's own list of running threads is the registry, so this module keeps no state."""
    name = builder_thread_name(lock_path(env_dir))
    return any(thread.name == name for thread in threading.enumerate())


def builder_thread_name(lock: Path) -> str:
    """The name of the thread that creates the environment guarded by `lock` (building_here looks for it)."""
    return f"DiffGesture environment builder {lock}"


def last_outcome(env_dir: str | Path) -> str | None:
    """How the last Create Environment for the folder ended, from its log's last line: 'finished', 'cancelled',
    'failed' or 'interrupted' (the log stops mid-way: Blender quit or crashed); None without a log."""
    try:
        with open(log_path(env_dir), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    last = lines[-1] if lines else ""
    if last == LOG_FINISHED:
        return "finished"
    if last.startswith(LOG_FAILED):
        return "cancelled" if last.startswith(LOG_FAILED + "cancelled") else "failed"
    return "interrupted"


def own_state(env_dir: str | Path) -> str:
    """A sentence for the preferences: the extension's environment is being created (here or by another Blender),
    absent, incomplete after a cancel, failure or quit, or in use."""
    python, builder = venv_python(env_dir), installer(env_dir)
    if builder == os.getpid():
        return "The extension's environment is being created (progress below)"
    if builder is not None:
        return f"Another Blender (PID {builder}) is creating the extension's environment: wait for it to finish"
    if not python.is_file():
        return "No environment yet: press Create Environment"
    how = {"cancelled": "was cancelled", "failed": "failed", "interrupted": "did not finish"}.get(last_outcome(env_dir))
    if how:
        return f"The extension's environment is incomplete (creating it {how}): press Create Environment"
    return f"Using the extension's environment: {python}"


# -- creating the environment --------------------------------------------------------------------------------
# pip's warning when a connection to an index fails: the tries left, the urllib3 error, its text, the page's path
PIP_RETRY = re.compile(r"WARNING: Retrying \(Retry\(total=(\d+).*\)\) after connection broken by "
                       r"'(\w+)\((.*)\)': (\S+)$")
CONNECTION_ERRORS = {"NameResolutionError": "its name could not be resolved",
                     "ConnectTimeoutError": "no connection within pip's timeout",
                     "ReadTimeoutError": "no answer within pip's timeout"}


def retry_in_words(line: str) -> tuple[str, int] | None:
    """pip's long retry warning (cut short in the preferences, it says nothing) as what failed in words and the
    tries left, e.g. ('no connection to the index for /simple/torch/ (connection refused)', 2); None for other lines."""
    match = PIP_RETRY.match(line)
    if match is None:
        return None
    left, error, detail, path = match.groups()
    if error == "NewConnectionError":  # its text ends "...: [Errno 111] Connection refused"
        why = re.sub(r"\[Errno -?\d+\] ", "", detail.rpartition(": ")[2]).strip("'\")").lower()
    else:
        why = CONNECTION_ERRORS.get(error, error)
    return f"no connection to the index for {path} ({why})", int(left)


class InstallerBusy(RuntimeError):
    """Another Blender is creating an environment in the same folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process exists (on Windows os.kill(pid, 0) would end it, so the kernel is asked instead)."""
    if os.name == "nt":
        import ctypes
        kernel = ctypes.windll.kernel32
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ok = kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def installs_into(pid: int, env_dir: Path) -> bool | None:
    """Whether process `pid` is an installer step for `env_dir` (its command line names it); None: cannot tell."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else False
    except OSError:
        return None
    return any(str(env_dir).encode() in arg for arg in cmdline)


class EnvironmentBuilder:
    """Creates a venv and installs a Plan in a background thread; `fraction`, `stage`, `status()` and `log_path`
    report on it; `on_done` is called (in its thread) when it ends. The lock file beside the folder names this
    process and its running step, so a second Create (this Blender or another) is refused while it runs and can
    take over from one whose Blender is gone."""

    def __init__(self, env_dir: str | Path, plan: Plan, python: str | None = None,
                 on_done: Callable[[], None] | None = None):
        self.env_dir, self.plan, self.on_done = Path(env_dir), plan, on_done
        self.python = python or base_python()
        self.log_path, self.lock_path = log_path(self.env_dir), lock_path(self.env_dir)
        self.stage, self.fraction = "waiting", 0.0
        self.error: str | None = None
        self.done = False
        self.last_line = ""  # the newest line pip printed: a sign of life for the preferences
        self.started = self.stage_started = time.monotonic()
        self.notes: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=builder_thread_name(self.lock_path), daemon=True)

    def steps(self) -> list[tuple[str, list[str]]]:
        py = str(venv_python(self.env_dir))
        return [("creating the virtual environment", [self.python, "-m", "venv", str(self.env_dir)]),
                ("updating pip", [py, "-m", "pip", "install", "--disable-pip-version-check", "-U", "pip"]),
                (f"installing PyTorch ({self.plan.variant}) and the core's requirements", [py, "-m", "pip"]),
                ("checking the installation", [py, "-c", "import torch, numpy, soundfile; "
                                                        "print('torch', torch.__version__, 'cuda', "
                                                        "torch.cuda.is_available())"])]

    def start(self) -> None:
        """Take the folder's lock (or raise InstallerBusy) and run the steps in a thread."""
        self.env_dir.parent.mkdir(parents=True, exist_ok=True)
        if building_here(self.env_dir):
            raise InstallerBusy(f"The environment in {self.env_dir} is already being created")
        self._take_lock()
        atexit.register(self._at_exit)  # quitting Blender stops pip instead of leaving it installing
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Stop the running step; the builder ends with error 'cancelled'."""
        self._cancelled = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def _at_exit(self) -> None:
        """Blender quits: stop pip and free the folder (the thread that would do it is not resumed)."""
        self.cancel()
        self.lock_path.unlink(missing_ok=True)

    def status(self) -> str:
        """The stage and how long it has run, e.g. 'installing PyTorch (cpu) ... (2:05)'."""
        minutes, seconds = divmod(int(time.monotonic() - self.stage_started), 60)
        return f"{self.stage} ({minutes}:{seconds:02d})"

    # the lock: {"owner": PID of the Blender that builds, "step": PID of its running step}
    def _take_lock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._clear_stale_lock()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"owner": os.getpid(), "step": None, "env": str(self.env_dir)}, f)
            return
        raise InstallerBusy(f"Could not take {self.lock_path}")

    def _clear_stale_lock(self) -> None:
        """Remove a lock left by a Blender that is gone, first stopping the pip it left running; refuse otherwise."""
        try:
            held = json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            held = {}
        owner, step = held.get("owner"), held.get("step")
        if owner and owner != os.getpid() and pid_alive(owner):
            raise InstallerBusy(f"Another Blender (PID {owner}) is already creating the environment in "
                                f"{self.env_dir}: wait for it to finish, or cancel it there")
        if step and pid_alive(step):
            if installs_into(step, self.env_dir) is None:
                raise InstallerBusy(f"An installer (PID {step}) left by an earlier Blender may still be writing "
                                    f"{self.env_dir}: end it, then delete {self.lock_path}")
            if installs_into(step, self.env_dir):
                os.kill(step, signal.SIGKILL)  # only where /proc proved it is ours
                self.notes.append(f"stopped the installer (PID {step}) left running by an earlier Blender "
                                  f"(PID {owner}); starting again")
        self.lock_path.unlink(missing_ok=True)

    def _record_step(self, pid: int | None) -> None:
        if self._cancelled:  # the lock may already be gone (Blender quitting): do not write it back
            return
        tmp = self.lock_path.with_name(self.lock_path.name + ".tmp")  # replaced whole: a reader never sees it half
        tmp.write_text(json.dumps({"owner": os.getpid(), "step": pid, "env": str(self.env_dir)}))
        tmp.replace(self.lock_path)

    def _run(self) -> None:
        try:
            with open(self.log_path, "w", encoding="utf-8") as log:
                self._write_log(log)
        except OSError as e:
            self.error = f"could not write {self.log_path}: {e}"
        finally:
            self.lock_path.unlink(missing_ok=True)
            atexit.unregister(self._at_exit)
            self.done = True
            if self.on_done is not None:
                self.on_done()

    def _write_log(self, log) -> None:
        steps = self.steps()
        log.write(f"Plan: {self.plan.reason}\n")
        for note in self.notes:
            log.write(f"Note: {note}\n")
        for i, (stage, cmd) in enumerate(steps):
            if self._cancelled:
                break
            self.stage, self.fraction, self.stage_started = stage, i / len(steps), time.monotonic()
            if cmd[1:] == ["-m", "pip"]:  # the install step: the user's index stays, PyTorch's is added
                cmd = [*cmd, *self._install_args(cmd[0], log)]
            log.write(f"== {stage}\n$ {' '.join(cmd)}\n")
            log.flush()
            code, reason = self._step(cmd, log)
            if self._cancelled:
                break
            if code != 0:
                self.error = f"{stage} failed: {reason} (see {self.log_path})"
                break
        else:
            self.stage, self.fraction, self.last_line = "done", 1.0, ""
        if self._cancelled:
            self.error = f"cancelled while {self.stage}; {CREATE_HINT} to start again"
        log.write(f"\n{LOG_FAILED + self.error if self.error else LOG_FINISHED}\n")

    def _install_args(self, python: str, log) -> list[str]:
        """pip's arguments for the install step, written to the log: the user's own index stays the main one;
        PyTorch's is added as an extra when it answers within PROBE_TIMEOUT, and otherwise left out with a note
        (pip would retry it for minutes: the install goes on from the user's index alone)."""
        config = pip_config(python)
        index, extras = user_indexes(config)
        own = index or "PyPI"
        with_torch = self.plan.needs_torch_index
        if with_torch:
            self.last_line = f"checking that PyTorch's index answers: {self.plan.index_url}"
            why = unreachable(self.plan.index_url, config.get("proxy"))
            if why:
                with_torch = False
                self.note(f"PyTorch's index is unreachable ({self.plan.index_url}: {why}); installing from your own "
                          f"index ({own})", log)
        log.write(f"Index: {index or 'PyPI (pip default)'} (your pip configuration is kept)"
                  + (f"; extra: {', '.join(extras)}" if extras else "")
                  + (f"; PyTorch's {self.plan.variant} index added as an extra: {self.plan.index_url}\n"
                     if with_torch else "\n"))
        return self.plan.pip_args(extras, with_torch)

    def note(self, text: str, log) -> None:
        """Tell the user something about the build: in the preferences (with the plan) and in the log."""
        self.notes.append(text)
        log.write(f"Note: {text}\n")

    def _step(self, cmd: list[str], log) -> tuple[int, str]:
        """Run one command, copying its output to the log line by line; its exit code and its last error line."""
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env(),
                                          text=True, errors="replace", bufsize=1)
        except OSError as e:
            log.write(f"{e}\n")
            return -1, str(e)
        self._record_step(self._proc.pid)
        first_error = ""  # pip's first ERROR line, or an exception's (the reason; later lines repeat it)
        unreached = ""  # the last index pip retried: why a package was not found
        for line in self._proc.stdout:
            log.write(line)
            log.flush()
            line = line.strip()
            if line:
                self.last_line = line
                retry = retry_in_words(line)
                if retry:
                    unreached = retry[0]
                    self.last_line = f"{unreached}: pip tries again ({retry[1]} left)"
                if not first_error and (line.startswith("ERROR:") or line.split(" ", 1)[0].endswith("Error:")):
                    first_error = line.removeprefix("ERROR:").strip()
        code = self._proc.wait()
        self._record_step(None)
        reason = first_error or self.last_line or f"exit code {code}"
        return code, f"{reason}; {unreached}" if code and unreached else reason

