"""The add-on's one torch worker: started off Blender's main thread, kept warm, restarted when it died, stopped at exit.

Starting a worker imports torch in another process and can take many seconds, so `start` refuses Blender's main
thread: generations and the preferences' Check start it from their own threads, and the UI keeps drawing. The
extension's own torch environment lives in env_dir(); environment_problem says what it lacks.
"""
from __future__ import annotations

import threading
from pathlib import Path

import bpy

from . import environment, shared

WorkerClient, WorkerError = shared.client.WorkerClient, shared.client.WorkerError


class WorkerHost:
    """Owns the shared WorkerClient for this Blender session (session.SESSION.worker) and the outcome of the last
    Check."""

    def __init__(self):
        self._client: WorkerClient | None = None
        self._restarts_seen = 0
        self._lock = threading.Lock()
        self._check: dict = {}

    def client(self, python: str) -> WorkerClient:
        """The client for this interpreter; a different interpreter replaces (and stops) the old one."""
        if self._client is not None and self._client.python != str(python):
            self._client.shutdown()
            self._client = None
        if self._client is None:
            # A headless Blender (blender -b: the headless command, a render farm) only waits on the worker.
            self._client = WorkerClient(python, core_parent=shared.CORE_PARENT, beside_ui=not bpy.app.background)
            self._restarts_seen = 0
        return self._client

    def start(self, python: str) -> tuple[shared.protocol.Ready, list[str]]:
        """Start the worker if needed (never on the main thread); its ready message and notes (e.g. a restart)."""
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("the worker is started off Blender's main thread, so that the UI never waits for it")
        with self._lock:
            c = self.client(python)
            try:
                info = c.start()
            except WorkerError as e:
                problem = environment_problem(python) if e.kind is shared.protocol.ErrorKind.ENVIRONMENT else None
                if problem:
                    raise WorkerError(problem, shared.protocol.ErrorKind.ENVIRONMENT) from None
                raise
            notes = []
            if c.restarts > self._restarts_seen:
                notes.append("the previous worker had stopped; a new one was started")
                self._restarts_seen = c.restarts
            return info, notes

    def pid(self) -> int | None:
        return self._client.proc.pid if self._client is not None and self._client.alive() else None

    def shutdown(self) -> None:
        """Stop the worker (Blender exit, add-on disabled, interpreter or environment changed)."""
        if self._client is not None:
            self._client.shutdown()
            self._client = None

    # -- the preferences' Check ----------------------------------------------------------------------------------
    def check(self, python: str) -> threading.Thread:
        """Start the worker in a thread and record what it reports (torch version, CUDA, GPU) for the preferences."""
        self._check = {"state": "running"}

        def run() -> None:
            try:
                info, notes = self.start(python)
                self._check = {"state": "ok", "info": info, "notes": notes}
            except WorkerError as e:
                self._check = {"state": "error", "message": str(e)}
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def forget_check(self) -> None:
        """Drop the last check's result: the environment or the interpreter it described has changed."""
        self._check = {}

    def check_running(self) -> bool:
        return self._check.get("state") == "running"

    def check_report(self) -> list[str]:
        """The outcome of the last check, as lines for the preferences."""
        state = self._check.get("state")
        if state == "running":
            return ["Checking: starting the worker..."]
        if state == "error":  # the last line: a traceback's own is the exception, the rest is in the console
            return [f"Check failed: {self._check['message'].strip().splitlines()[-1]}"]
        if state == "ok":
            info = self._check["info"]
            cuda = f"CUDA {info.cuda_version} available" if info.cuda else "CUDA not available"
            return [f"torch {info.torch}, {cuda}, device: {info.device_name}", f"worker PID {info.pid}, {info.python}",
                    *self._check["notes"]]
        return []


def env_dir() -> Path:
    """The extension's own torch environment folder (in its user directory, kept across updates)."""
    try:
        return Path(bpy.utils.extension_path_user(__package__, path="torch-env", create=True))
    except ValueError:  # loaded as a plain add-on from a source checkout, not as an extension
        return Path(bpy.utils.user_resource("SCRIPTS", path="diffgesture")) / "torch-env"


def environment_problem(python: str, remedy: str = "") -> str | None:
    """What is missing for the worker (no environment yet, no numpy, no torch) and what to press; None if nothing."""
    own = Path(python) == environment.venv_python(env_dir())
    return environment.diagnose(python, own, remedy)
