"""The generation worker: `python -m model_core.worker`, one job at a time, spoken to through protocol.py.

A reader thread takes requests from stdin so that a cancel reaches a running job (checked at every denoising
step). The real stdout carries protocol messages only: anything libraries print goes to stderr. Errors are sent
as text with a kind, never as pickled exceptions. Models are cached by (checkpoint file, device).
"""
from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
import traceback

from .protocol import PROTOCOL_VERSION, ProtocolError, decode, encode, resolve_checkpoint

PROGRESS_INTERVAL = 0.1
MAX_LINE = 1 << 20  # a request is a few hundred bytes; longer lines are refused without being held in memory
# The fields each request may carry and their types; "id" (a string or an integer) is allowed on all of them.
REQUESTS = {"generate": {"audio": str, "output": str, "checkpoint": str, "device": str, "settings": dict},
            "info": {"checkpoint": str}, "ping": {}, "cancel": {}, "shutdown": {}}
REQUIRED = {"generate": ("audio", "output")}


def check_request(msg: dict) -> str:
    """Why a decoded message is not a valid request ("" when it is): unknown type, missing or mistyped fields."""
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in REQUESTS:
        return f"unknown request type {kind!r:.60}"
    job_id = msg.get("id")
    if job_id is not None and (type(job_id) not in (str, int) or len(str(job_id)) > 200):
        return f"{kind} request: 'id' must be a string or an integer, not {job_id!r:.60}"
    for name, expected in REQUESTS[kind].items():
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
                    self.send({"type": "error", "id": job_id, "kind": "protocol", "message": problem})
                elif msg["type"] == "cancel":
                    self.cancelled.add(msg.get("id"))
                else:
                    self.requests.put(msg)
            except Exception as e:  # a malformed line (deep nesting, bad UTF-8 ...) is reported, never fatal
                message = str(e) if isinstance(e, ProtocolError) else f"malformed request ({type(e).__name__})"
                self.send({"type": "error", "id": None, "kind": "protocol", "message": message})
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
        kind = msg["type"]
        if kind == "ping":
            self.send({"type": "pong", "id": msg.get("id")})
        elif kind == "info":
            ckpt, dev, _ = self.model(msg.get("checkpoint", "default"), "cpu")
            self.send({"type": "info", "id": msg.get("id"), "skeleton": ckpt.skeleton.name,
                       "config": ckpt.config.to_dict(), "provenance": ckpt.provenance, "sha256": ckpt.sha256,
                       "source_format": ckpt.source_format})
        elif kind == "generate":
            self.generate(msg)
        else:
            self.send({"type": "error", "id": msg.get("id"), "kind": "protocol", "message": f"unknown request {kind!r}"})

    def generate(self, msg: dict) -> None:
        import torch
        from .pipeline import GenerationSettings, generate_file
        job_id = msg.get("id")
        fields = {f.name for f in dataclasses.fields(GenerationSettings)}
        unknown = sorted(set(msg.get("settings", {})) - fields)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
        settings = GenerationSettings(**msg.get("settings", {}))
        settings.validate()
        last = [0.0]

        def progress(p) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or p.step == p.steps:
                last[0] = now
                self.send({"type": "progress", "id": job_id, "window": p.window, "windows": p.windows,
                           "step": p.step, "steps": p.steps, "fraction": round(p.fraction, 4)})

        def run(device: str) -> tuple[dict, list[str]]:
            ckpt, _, note = self.model(msg.get("checkpoint", "default"), device)
            meta = generate_file(ckpt, msg["audio"], msg["output"], settings, progress,
                                 cancel=lambda: self.client_gone or job_id in self.cancelled)
            return meta, [note] if note else []
        try:
            meta, notes = run(msg.get("device", "auto"))
        except torch.cuda.OutOfMemoryError:  # loading the model or generating: the whole request goes to the CPU
            self.models.clear()
            torch.cuda.empty_cache()
            meta, notes = run("cpu")
            notes.append("the GPU ran out of memory; this generation was retried on the CPU")
        checkpoint = str(resolve_checkpoint(msg.get("checkpoint", "default")))
        self.send({"type": "result", "id": job_id, "output": str(msg["output"]), "notes": notes,
                   "checkpoint": checkpoint, **meta})

    def serve(self) -> None:
        import torch
        from .precision import configure_threads
        configure_threads()  # Blender shares the cores: never more threads than physical cores
        threading.Thread(target=self.read_stdin, daemon=True).start()
        cuda = torch.cuda.is_available()
        self.send({"type": "ready", "protocol": PROTOCOL_VERSION, "torch": torch.__version__, "cuda": cuda,
                   "cuda_version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0) if cuda else "CPU",
                   "pid": os.getpid(), "python": sys.executable})
        while True:
            msg = self.requests.get()
            if msg["type"] == "shutdown":
                return
            try:
                self.handle(msg)
            except Exception as e:  # every failure becomes a readable message for the client
                self.send({"type": "error", "id": msg.get("id"), "kind": error_kind(e),
                           "message": str(e) or type(e).__name__})
                if error_kind(e) == "internal":
                    traceback.print_exc(file=sys.stderr)
            finally:
                self.cancelled.discard(msg.get("id"))


def error_kind(e: Exception) -> str:
    from .audio import AudioError
    from .checkpoint import CheckpointError
    from .pipeline import Cancelled
    for cls, kind in ((AudioError, "audio"), (CheckpointError, "checkpoint"), (Cancelled, "cancelled"),
                      (ValueError, "settings"), (TypeError, "settings")):
        if isinstance(e, cls):
            return kind
    return "internal"


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    Worker(out).serve()


if __name__ == "__main__":
    main()
