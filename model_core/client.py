"""The worker client: starts `python -m model_core.worker` in another interpreter and speaks protocol.py to it.

Stdlib + numpy only (the add-on uses it inside Blender). Reader threads collect the worker's output; `pump` routes
it to the jobs on the caller's thread. A request whose reply is not the type its class names (protocol.py) fails.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Callable

from .protocol import (PROTOCOL_VERSION, REQUESTS, Cancel, Error, ErrorKind, Generate, Ping, Progress, ProtocolError,
                       Ready, Reply, Request, Reroll, Shutdown, decode, encode)


class WorkerError(RuntimeError):
    """The worker could not start, died, stalled, or reported an error; `kind` (an ErrorKind) says which."""

    def __init__(self, message: str, kind: ErrorKind):
        super().__init__(message)
        self.kind = kind


class Job:
    """A request in flight: poll() drains its messages without blocking; wait() blocks until it ends."""

    def __init__(self, client: "WorkerClient", job_id: str, reply: type[Reply]):
        self.client, self.id, self.reply = client, job_id, reply  # reply: the class of the message that answers it
        self.progress: Progress | None = None
        self.result: Reply | None = None
        self.error: WorkerError | None = None
        self.done = False

    def _accept(self, msg: dict) -> None:
        """Take in a decoded message for this job; ProtocolError when its fields are not what its type says."""
        kind = msg["type"]
        if kind == Progress.type:
            self.progress = Progress.from_wire(msg)
        elif kind == Error.type:
            error = Error.from_wire(msg)
            self.error, self.done = WorkerError(error.message, error.kind), True
        elif kind == self.reply.type:
            self.result, self.done = self.reply.from_wire(msg), True
        else:
            self.error, self.done = WorkerError(f"the worker answered {kind!r} where {self.reply.type!r} was "
                                                "expected", ErrorKind.PROTOCOL), True

    def poll(self) -> bool:
        """Take in whatever arrived; True once the job has ended (result or error)."""
        self.client.pump()
        return self.done

    def wait(self, timeout: float | None = None, on_progress: Callable[[Progress], None] | None = None) -> Reply:
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
            self.client.send(Cancel(id=self.id))


class WorkerClient:
    """Starts `python -m model_core.worker` in another interpreter and talks to it; restarts it when it died.

    python: the interpreter of the environment that holds torch. core_parent: the folder containing model_core.
    stall_timeout: seconds without any message from a busy worker before it is declared hung and stopped.
    beside_ui: the worker runs beside an interactive program (Blender's UI) rather than for one that only waits on
    it (a headless job): it leaves that program a core and its threads sleep between parallel regions (see start)."""

    def __init__(self, python: str | Path, core_parent: str | Path | None = None, env: dict | None = None,
                 startup_timeout: float = 120.0, stall_timeout: float = 120.0, beside_ui: bool = True):
        self.python = str(python)
        self.beside_ui = beside_ui
        self.core_parent = str(core_parent or Path(__file__).resolve().parent.parent)
        self.env = env or {}
        self.startup_timeout, self.stall_timeout = startup_timeout, stall_timeout
        self.proc: subprocess.Popen | None = None
        self.info: Ready | None = None
        self.jobs: dict[str, Job] = {}
        self.restarts = 0
        self._lines: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=60)
        self._last_message = time.monotonic()

    # -- process lifecycle -------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Ready:
        """Start the worker (if not running) and return its ready message: torch version, CUDA, GPU name."""
        if self.alive():
            return self.info
        if self.proc is not None:
            self.restarts += 1
        if not Path(self.python).is_file():
            raise WorkerError(f"the torch environment's Python was not found: {self.python}", ErrorKind.ENVIRONMENT)
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = self.core_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        if self.beside_ui:
            # Beside Blender's UI the worker leaves it a core, and its OpenMP threads sleep instead of spinning, so
            # that the UI's bursts never wait for a spinning thread (benchmarks/RESULTS.md). A headless job takes
            # what the load leaves, as the CLI (model_core/cpu.py). libgomp reads OMP_WAIT_POLICY when torch loads.
            # The user's settings win.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            env.setdefault("DIFFGESTURE_SPARE_CORES", "1")
        for var in ("PYTHONHOME", "PYTHONSTARTUP"):  # Blender's own Python must not leak into the environment
            env.pop(var, None)
        try:
            self.proc = subprocess.Popen([self.python, "-m", "model_core.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         cwd=self.core_parent)
        except OSError as e:
            raise WorkerError(f"cannot start the worker with {self.python}: {e}", ErrorKind.ENVIRONMENT) from None
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
                ready = Ready.from_wire(msg) if msg["type"] == Ready.type else None
            except ProtocolError as e:  # e.g. a library printing to stdout before the worker could redirect it
                self.kill(str(e))
                raise WorkerError(f"{e}; the worker was stopped", ErrorKind.ENVIRONMENT) from None
            if ready is not None:
                if ready.protocol != PROTOCOL_VERSION:
                    self.kill("protocol mismatch")
                    raise WorkerError(f"worker speaks protocol {ready.protocol}, expected {PROTOCOL_VERSION}",
                                      ErrorKind.PROTOCOL)
                self.info = ready
                self._last_message = time.monotonic()
                return ready
        tail = self.stderr_tail()
        self.kill("did not start")
        if "No module named 'torch'" in tail or "No module named torch" in tail:
            raise WorkerError(f"torch is not installed in {self.python}: create the environment in the add-on "
                              "preferences or point them at a Python that has torch", ErrorKind.ENVIRONMENT)
        raise WorkerError(f"the worker did not start ({self.python}): {tail or 'no output'}", ErrorKind.ENVIRONMENT)

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
        self._fail_open_jobs(WorkerError(reason, ErrorKind.WORKER))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if not self.alive():
            return
        try:
            self.send(Shutdown())
            self.proc.wait(timeout=timeout)
        except (WorkerError, subprocess.TimeoutExpired):
            self.kill("shut down")

    def _fail_open_jobs(self, err: WorkerError) -> None:
        for job in self.jobs.values():
            if not job.done:
                job.error, job.done = err, True
        self.jobs.clear()

    # -- messages ----------------------------------------------------------------------------------------------
    def send(self, request: Request) -> None:
        if not self.alive():
            raise WorkerError("the worker is not running", ErrorKind.WORKER)
        try:
            self.proc.stdin.write(encode(request.to_wire()))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"lost the connection to the worker: {e}", ErrorKind.WORKER) from None

    def submit(self, request: Request | dict) -> Job:
        """Send a request (a protocol.py request, or its wire form: a script's dict) and return its Job; the worker
        is started first if needed, on the caller's thread."""
        if isinstance(request, dict):
            if request.get("type") not in REQUESTS:
                raise ValueError(f"not a request type: {request.get('type')!r} (the protocol's are "
                                 f"{', '.join(REQUESTS)})")
            request = REQUESTS[request["type"]].from_wire(request)
        if request.reply is None:
            raise ValueError(f"a {request.type} request has no reply to wait for: send it with send()")
        self.start()
        request = dataclasses.replace(request, id=request.id or uuid.uuid4().hex[:12])
        job = Job(self, request.id, request.reply)
        self.jobs[request.id] = job
        self._last_message = time.monotonic()
        self.send(request)
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
                                                                                else ""), ErrorKind.CRASHED))
                return
            try:
                msg = decode(item)
                self._last_message = time.monotonic()
                job = self.jobs.get(msg.get("id"))
                if job is not None:
                    job._accept(msg)
            except ProtocolError as e:
                self.kill(f"{e}; the worker was stopped and will be restarted on the next request")
                return
            if job is not None and job.done:
                self.jobs.pop(job.id, None)
            block = 0.0
        if self.jobs and time.monotonic() - self._last_message > self.stall_timeout:
            self.kill(f"the worker sent nothing for {self.stall_timeout:.0f} s and was stopped as hung")

    # -- convenience -------------------------------------------------------------------------------------------
    def generate(self, audio: str | Path, output: str | Path, checkpoint: str = "default", device: str = "auto",
                 settings: dict | None = None) -> Job:
        return self.submit(Generate(audio=str(audio), output=str(output), checkpoint=str(checkpoint), device=device,
                                    settings=settings or {}))

    def reroll(self, result: str | Path, audio: str | Path, frames: tuple[int, int], output: str | Path,
               checkpoint: str = "default", device: str = "auto", settings: dict | None = None) -> Job:
        """Sample frames[0]..frames[1] (15 fps, inclusive) of an earlier result again; settings override the take's."""
        return self.submit(Reroll(result=str(result), audio=str(audio), range=list(frames), output=str(output),
                                  checkpoint=str(checkpoint), device=device, settings=settings or {}))

    def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time of an empty request, in seconds."""
        t0 = time.perf_counter()
        self.submit(Ping()).wait(timeout)
        return time.perf_counter() - t0

