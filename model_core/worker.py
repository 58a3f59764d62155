"""The generation worker: `python -m model_core.worker`, one job at a time, spoken to through protocol.py.

A reader thread takes requests from stdin so that a cancel reaches a running job (checked at every denoising
step). The real stdout carries protocol messages only: anything libraries print goes to stderr. Errors are sent
as text with a kind, never as pickled exceptions. Models are cached by (checkpoint file, device).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback

from . import import_torch
from .protocol import PROTOCOL_VERSION, REQUESTS, ErrorKind, ProtocolError, decode, encode, error_reply
from .settings import GenerationSettings, resolve_checkpoint

PROGRESS_INTERVAL = 0.1
MAX_LINE = 1 << 20  # a request is a few hundred bytes; longer lines are refused without being held in memory
# The fields each request may carry and their types; "id" (a string or an integer) is allowed on all of them.
REQUEST_FIELDS = {"generate": {"audio": str, "output": str, "checkpoint": str, "device": str, "settings": dict},
                  "reroll": {"result": str, "audio": str, "range": list, "output": str, "checkpoint": str,
                             "device": str, "settings": dict},
                  "info": {"checkpoint": str}, "ping": {}, "cancel": {}, "shutdown": {}}
REQUIRED = {"generate": ("audio", "output"), "reroll": ("result", "audio", "range", "output")}


def check_request(msg: dict) -> str:
    """Why a decoded message is not a valid request ("" when it is): unknown type, missing or mistyped fields."""
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in REQUEST_FIELDS:
        return f"unknown request type {kind!r:.60}"
    job_id = msg.get("id")
    if job_id is not None and (type(job_id) not in (str, int) or len(str(job_id)) > 200):
        return f"{kind} request: 'id' must be a string or an integer, not {job_id!r:.60}"
    for name, expected in REQUEST_FIELDS[kind].items():
        if name in msg and not isinstance(msg[name], expected):
            return f"{kind} request: {name!r} must be a {expected.__name__}, not {type(msg[name]).__name__}"
    missing = [name for name in REQUIRED.get(kind, ()) if name not in msg]
    return f"{kind} request lacks {', '.join(repr(m) for m in missing)}" if missing else ""


class Worker:
    def __init__(self, out):
        self.out = out
        self.out_lock = threading.Lock()
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set = set()
        self.client_gone = False  # stdin closed: a running job stops at its next step
        self.models: dict = {}
        # one handler per request type of protocol.REQUESTS; each sends that request's reply
        self.handlers = {"generate": self.generate, "reroll": self.reroll, "info": self.info, "ping": self.ping}

    def send(self, msg: dict) -> None:
        with self.out_lock:
            try:
                self.out.write(encode(msg))
                self.out.flush()
            except (BrokenPipeError, OSError, ValueError):  # the client is gone: nobody is left to tell
                self.client_gone = True

    def read_stdin(self, stdin=None) -> None:
        """Route each line: cancels take effect at once, other requests queue; no line can stop this loop."""
        stdin = stdin or sys.stdin.buffer
        while True:
            try:
                raw = stdin.readline(MAX_LINE)
            except (OSError, ValueError):
                break
            if not raw:
                break
            try:
                if not raw.endswith(b"\n") and len(raw) >= MAX_LINE:
                    while (rest := stdin.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                        pass  # drop the rest of the over-long line
                    raise ProtocolError(f"request line longer than {MAX_LINE} bytes")
                msg = decode(raw, "the client")
                problem = check_request(msg)
                if problem:
                    job_id = msg.get("id") if type(msg.get("id")) in (str, int) else None
                    self.send(error_reply(job_id, ErrorKind.PROTOCOL, problem))
                elif msg["type"] == "cancel":
                    self.cancelled.add(msg.get("id"))
                else:
                    self.requests.put(msg)
            except Exception as e:  # a malformed line (deep nesting, bad UTF-8 ...) is reported, never fatal
                message = str(e) if isinstance(e, ProtocolError) else f"malformed request ({type(e).__name__})"
                self.send(error_reply(None, ErrorKind.PROTOCOL, message))
        self.client_gone = True
        self.requests.put({"type": "shutdown"})  # stdin closed: the client is gone

    def model(self, checkpoint: str, device: str):
        from .checkpoint import load_checkpoint
        from .pipeline import resolve_device
        path = resolve_checkpoint(checkpoint)
        dev, note = resolve_device(device)
        key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else 0, str(dev))
        if key not in self.models:
            self.models.clear()  # one model resident at a time keeps memory bounded
            ckpt = load_checkpoint(path)
            ckpt.model.to(dev)
            self.models[key] = ckpt
        return self.models[key], dev, note

    def handle(self, msg: dict) -> None:
        handler = self.handlers.get(msg["type"])
        if handler is None:
            self.send(error_reply(msg.get("id"), ErrorKind.PROTOCOL, f"unknown request {msg['type']!r}"))
        else:
            handler(msg)

    def ping(self, msg: dict) -> None:
        self.send({"type": REQUESTS["ping"], "id": msg.get("id")})

    def info(self, msg: dict) -> None:
        ckpt, _, _ = self.model(msg.get("checkpoint", "default"), "cpu")
        self.send({"type": REQUESTS["info"], "id": msg.get("id"), "skeleton": ckpt.skeleton.name,
                   "config": ckpt.config.to_dict(), "provenance": ckpt.provenance, "sha256": ckpt.sha256,
                   "source_format": ckpt.source_format})

    def generate(self, msg: dict) -> None:
        from .pipeline import generate_file
        settings = GenerationSettings.from_dict(msg.get("settings", {}))
        self.run_job(msg, lambda ckpt, progress, cancel: generate_file(ckpt, msg["audio"], msg["output"], settings,
                                                                       progress, cancel))

    def reroll(self, msg: dict) -> None:
        from .reroll import reroll_file
        frames = msg["range"]
        if len(frames) != 2:
            raise ValueError(f"reroll request: 'range' must be [start, end], not {frames!r:.60}")
        overrides = msg.get("settings", {})
        GenerationSettings.from_dict(overrides)  # unknown or mistyped names are refused before anything runs
        self.run_job(msg, lambda ckpt, progress, cancel: reroll_file(ckpt, msg["result"], msg["audio"], msg["output"],
                                                                     *frames, overrides, progress, cancel))

    def run_job(self, msg: dict, job) -> None:
        """Run job(checkpoint, progress, cancel) -> summary for a request that writes a result file, sending its
        progress and its reply; on a GPU out of memory the whole request runs again on the CPU."""
        import torch
        job_id = msg.get("id")
        last = [0.0]

        def progress(p) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or p.step == p.steps:
                last[0] = now
                self.send({"type": "progress", "id": job_id, "window": p.window, "windows": p.windows,
                           "step": p.step, "steps": p.steps, "fraction": round(p.fraction, 4)})

        def run(device: str) -> tuple[dict, list[str]]:
            ckpt, _, note = self.model(msg.get("checkpoint", "default"), device)
            meta = job(ckpt, progress, lambda: self.client_gone or job_id in self.cancelled)
            return meta, [note] if note else []
        try:
            meta, notes = run(msg.get("device", "auto"))
        except torch.cuda.OutOfMemoryError:  # loading the model or generating: the whole request goes to the CPU
            self.models.clear()
            torch.cuda.empty_cache()
            meta, notes = run("cpu")
            notes.append("the GPU ran out of memory; this generation was retried on the CPU")
        checkpoint = str(resolve_checkpoint(msg.get("checkpoint", "default")))
        self.send({"type": REQUESTS[msg["type"]], "id": job_id, "output": str(msg["output"]), "notes": notes,
                   "checkpoint": checkpoint, **meta})

    def serve(self) -> None:
        torch = import_torch()
        from .cpu import governor
        threads = governor(spare_cores())
        threading.Thread(target=self.read_stdin, daemon=True).start()
        cuda = torch.cuda.is_available()
        self.send({"type": "ready", "protocol": PROTOCOL_VERSION, "torch": torch.__version__, "cuda": cuda,
                   "cuda_version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0) if cuda else "CPU",
                   "pid": os.getpid(), "python": sys.executable, "threads": threads.adapt(),
                   "max_threads": threads.most})
        while True:
            msg = self.requests.get()
            if msg["type"] == "shutdown":
                return
            try:
                self.handle(msg)
            except Exception as e:  # every failure becomes a readable message for the client
                kind = error_kind(e)
                self.send(error_reply(msg.get("id"), kind, str(e) or type(e).__name__))
                if kind is ErrorKind.INTERNAL:
                    traceback.print_exc(file=sys.stderr)
            finally:
                self.cancelled.discard(msg.get("id"))


def error_kind(e: Exception) -> ErrorKind:
    """The kind a failed request is reported with."""
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .pipeline import Cancelled
    for cls, kind in ((AudioError, ErrorKind.AUDIO), (CheckpointError, ErrorKind.CHECKPOINT),
                      (Cancelled, ErrorKind.CANCELLED), (ValueError, ErrorKind.SETTINGS),
                      (TypeError, ErrorKind.SETTINGS)):
        if isinstance(e, cls):
            return kind
    return ErrorKind.INTERNAL


def spare_cores() -> int:
    """Physical cores the worker leaves to the program that started it: $DIFFGESTURE_SPARE_CORES (0-64), else none.
    The client asks for one beside Blender's UI (client.py)."""
    value = os.environ.get("DIFFGESTURE_SPARE_CORES", "0")
    return int(value) if value.isdigit() and int(value) <= 64 else 0


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    Worker(out).serve()


if __name__ == "__main__":
    main()
