"""The worker protocol, shared by the worker (torch side) and its clients (Blender side): stdlib + numpy only.

Messages are JSON objects, one per line, prefixed with a tag and the protocol version ("DGW1 {...}\\n"), on the
worker's stdin (requests) and stdout (replies). Anything else the worker's stdout carries is a protocol error.
Results are not sent inline: the worker writes an .npz (see write_result) and replies with its path.

Requests:  generate {id, audio, checkpoint, device, settings, output} · info {id, checkpoint} · ping {id}
           cancel {id} · shutdown
Replies:   ready {protocol, torch, cuda, device_name, pid} (unprompted, once) · progress {id, window, windows,
           step, steps, fraction} · result {id, ...} · info {id, ...} · pong {id} · error {id, kind, message}
Error kinds: audio, checkpoint, settings, cancelled, device, internal.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import uuid
import zipfile
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

PROTOCOL_VERSION = 1
TAG = f"DGW{PROTOCOL_VERSION} "
RESULT_FORMAT = "diffgesture-poses"
# The fast sampler's default number of steps, for every front end (K = 25 matched K = 50 on the demo model).
DEFAULT_FAST_STEPS = 25
# The checkpoint a request names as "default": the demo checkpoint bundled inside model_core.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "demo_ted_gesture.pt"


def resolve_checkpoint(name: str) -> Path:
    """A request's checkpoint field as a path: "" or "default" mean the bundled one."""
    return DEFAULT_CHECKPOINT if name in ("", "default") else Path(name)


class ProtocolError(RuntimeError):
    """A line that is not a protocol message (for example stray output from a library in the worker)."""


class WorkerError(RuntimeError):
    """The worker could not start, died, stalled, or reported an error; `kind` says which."""

    def __init__(self, message: str, kind: str = "worker"):
        super().__init__(message)
        self.kind = kind


def encode(msg: dict) -> bytes:
    return (TAG + json.dumps(msg, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes | str, sender: str = "the worker") -> dict:
    """One protocol line as a message; anything else is a ProtocolError naming the `sender`."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if not text.startswith(TAG):
        raise ProtocolError(f"unexpected output from {sender}: {text[:200]!r}")
    try:
        msg = json.loads(text[len(TAG):])
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed message from {sender} ({e}): {text[:200]!r}") from None
    if not isinstance(msg, dict) or "type" not in msg:
        raise ProtocolError(f"message without a type: {text[:200]!r}")
    return msg


def check_output(path: str | Path, keep: tuple = ()) -> Path:
    """Where a result may go: a new file, or an existing DiffGesture result, in an existing folder; never a folder,
    a device, one of the `keep` files (the inputs) or any other existing file. Checked before generating."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"the output folder does not exist: {path.parent}")
    if not path.exists():
        return path
    if path.is_dir():
        raise ValueError(f"the output path is a folder; name a file in it: {path}")
    if not path.is_file():
        raise ValueError(f"the output path is a device or another special file; refusing to replace it: {path}")
    if any(Path(k).exists() and path.samefile(k) for k in keep):
        raise ValueError(f"the output would overwrite the input {path}; name another file")
    if not is_result_file(path):
        raise ValueError(f"the output {path} exists and is not a DiffGesture result; refusing to overwrite it "
                         "(name a new file or delete it first)")
    return path


def is_result_file(path: Path) -> bool:
    """Whether a file is a result written by write_result (an .npz holding exactly poses, directions and meta)."""
    try:
        with zipfile.ZipFile(path) as z:
            return sorted(z.namelist()) == ["directions.npy", "meta.npy", "poses.npy"]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def write_result(path: str | Path, poses: np.ndarray, directions: np.ndarray, meta: dict) -> None:
    """Save generated motion: normalised poses (V, F, D), canonical unit directions (V, F, bones, 3), metadata.
    Written to a new temporary file beside `path` and renamed over it; nothing is left behind when writing fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, poses=poses.astype(np.float32), directions=directions.astype(np.float32),
                     meta=np.array(json.dumps({"format": RESULT_FORMAT, **meta})))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(path: str | Path) -> dict:
    """Load a result file: {'poses', 'directions', 'meta'} (meta holds skeleton, fps, seed, checkpoint hash ...)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != RESULT_FORMAT:
            raise ValueError(f"{path} is not a DiffGesture result file")
        return {"poses": z["poses"], "directions": z["directions"], "meta": meta}


class Job:
    """A request in flight: poll() drains its messages without blocking; wait() blocks until it ends."""

    def __init__(self, client: "WorkerClient", job_id: str):
        self.client, self.id = client, job_id
        self.progress: dict | None = None
        self.result: dict | None = None
        self.error: WorkerError | None = None
        self.done = False

    def _accept(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "progress":
            self.progress = msg
        elif kind == "error":
            self.error, self.done = WorkerError(msg.get("message", "worker error"), msg.get("kind", "internal")), True
        else:
            self.result, self.done = msg, True

    def poll(self) -> bool:
        """Take in whatever arrived; True once the job has ended (result or error)."""
        self.client.pump()
        return self.done

    def wait(self, timeout: float | None = None, on_progress: Callable[[dict], None] | None = None) -> dict:
        """Block until the job ends; return its reply or raise its WorkerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while not self.done:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.client.kill(f"the worker did not finish within {timeout:.0f} s and was stopped")
                break
            self.client.pump(block=min(0.2, remaining) if remaining is not None else 0.2)
            if on_progress is not None and self.progress is not None and self.progress is not last:
                last = self.progress
                on_progress(last)
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        if not self.done:
            self.client.send({"type": "cancel", "id": self.id})


class WorkerClient:
    """Starts `python -m model_core.worker` in another interpreter and talks to it; restarts it when it died.

    python: the interpreter of the environment that holds torch. core_parent: the folder containing model_core.
    stall_timeout: seconds without any message from a busy worker before it is declared hung and stopped."""

    def __init__(self, python: str | Path, core_parent: str | Path | None = None, env: dict | None = None,
                 startup_timeout: float = 120.0, stall_timeout: float = 120.0):
        self.python = str(python)
        self.core_parent = str(core_parent or Path(__file__).resolve().parent.parent)
        self.env = env or {}
        self.startup_timeout, self.stall_timeout = startup_timeout, stall_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.jobs: dict[str, Job] = {}
        self.restarts = 0
        self._lines: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=60)
        self._last_message = time.monotonic()

    # -- process lifecycle -------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> dict:
        """Start the worker (if not running) and return its ready message: torch version, CUDA, GPU name."""
        if self.alive():
            return self.info
        if self.proc is not None:
            self.restarts += 1
        if not Path(self.python).is_file():
            raise WorkerError(f"the torch environment's Python was not found: {self.python}", "environment")
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = self.core_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        for var in ("PYTHONHOME", "PYTHONSTARTUP"):  # Blender's own Python must not leak into the environment
            env.pop(var, None)
        try:
            self.proc = subprocess.Popen([self.python, "-m", "model_core.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         cwd=self.core_parent)
        except OSError as e:
            raise WorkerError(f"cannot start the worker with {self.python}: {e}", "environment") from None
        self._lines = queue.Queue()
        self._stderr.clear()
        threading.Thread(target=self._read_stdout, args=(self.proc, self._lines), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                item = self._lines.get(timeout=0.1)
            except queue.Empty:
                if not self.alive():
                    break
                continue
            if item is None:
                break
            try:
                msg = decode(item)
            except ProtocolError as e:  # e.g. a library printing to stdout before the worker could redirect it
                self.kill(str(e))
                raise WorkerError(f"{e}; the worker was stopped", "environment") from None
            if msg["type"] == "ready":
                if msg.get("protocol") != PROTOCOL_VERSION:
                    self.kill("protocol mismatch")
                    raise WorkerError(f"worker speaks protocol {msg.get('protocol')}, expected {PROTOCOL_VERSION}")
                self.info = msg
                self._last_message = time.monotonic()
                return msg
        tail = self.stderr_tail()
        self.kill("did not start")
        if "No module named 'torch'" in tail or "No module named torch" in tail:
            raise WorkerError(f"torch is not installed in {self.python}: create the environment in the add-on "
                              "preferences or point them at a Python that has torch", "environment")
        raise WorkerError(f"the worker did not start ({self.python}): {tail or 'no output'}", "environment")

    def _read_stdout(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for raw in proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def stderr_tail(self, n: int = 12) -> str:
        return "\n".join(list(self._stderr)[-n:])

    def kill(self, reason: str = "stopped") -> None:
        """Stop the worker now; every open job fails with `reason`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._fail_open_jobs(WorkerError(reason, "worker"))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if not self.alive():
            return
        try:
            self.send({"type": "shutdown"})
            self.proc.wait(timeout=timeout)
        except (WorkerError, subprocess.TimeoutExpired):
            self.kill("shut down")

    def _fail_open_jobs(self, err: WorkerError) -> None:
        for job in self.jobs.values():
            if not job.done:
                job.error, job.done = err, True
        self.jobs.clear()

    # -- messages ----------------------------------------------------------------------------------------------
    def send(self, msg: dict) -> None:
        if not self.alive():
            raise WorkerError("the worker is not running")
        try:
            self.proc.stdin.write(encode(msg))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"lost the connection to the worker: {e}") from None

    def submit(self, msg: dict) -> Job:
        """Send a request (starting the worker if needed) and return its Job."""
        self.start()
        job_id = msg.get("id") or uuid.uuid4().hex[:12]
        job = Job(self, job_id)
        self.jobs[job_id] = job
        self._last_message = time.monotonic()
        self.send({**msg, "id": job_id})
        return job

    def pump(self, block: float = 0.0) -> None:
        """Route every message that has arrived to its job; detect a dead, hung or babbling worker."""
        deadline = time.monotonic() + block
        while True:
            try:
                item = self._lines.get(timeout=max(0.0, deadline - time.monotonic())) if block else \
                    self._lines.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stdout closed: the worker exited
                code = self.proc.wait() if self.proc is not None else None
                tail = self.stderr_tail()
                self._fail_open_jobs(WorkerError(
                    f"the worker stopped unexpectedly (exit code {code})" + (f": {tail.splitlines()[-1]}" if tail
                                                                                else ""), "crashed"))
                return
            try:
                msg = decode(item)
            except ProtocolError as e:
                self.kill(f"{e}; the worker was stopped and will be restarted on the next request")
                return
            self._last_message = time.monotonic()
            job = self.jobs.get(msg.get("id"))
            if job is not None:
                job._accept(msg)
                if job.done:
                    self.jobs.pop(job.id, None)
            block = 0.0
        if self.jobs and time.monotonic() - self._last_message > self.stall_timeout:
            self.kill(f"the worker sent nothing for {self.stall_timeout:.0f} s and was stopped as hung")

    # -- convenience -------------------------------------------------------------------------------------------
    def generate(self, audio: str | Path, output: str | Path, checkpoint: str = "default", device: str = "auto",
                 settings: dict | None = None) -> Job:
        return self.submit({"type": "generate", "audio": str(audio), "output": str(output),
                            "checkpoint": str(checkpoint), "device": device, "settings": settings or {}})

    def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time of an empty request, in seconds."""
        t0 = time.perf_counter()
        self.submit({"type": "ping"}).wait(timeout)
        return time.perf_counter() - t0
