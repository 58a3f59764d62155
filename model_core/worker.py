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
from .protocol import (PROTOCOL_VERSION, Cancel, Error, ErrorKind, Generate, GetInfo, Info, Ping, Pong, Progress,
                       ProtocolError, Ready, Reply, Request, Reroll, Result, ResultRequest, Shutdown, decode, encode,
                       read_request, valid_id)
from .settings import GenerationSettings, resolve_checkpoint

PROGRESS_INTERVAL = 0.1
MAX_LINE = 1 << 20  # a request is a few hundred bytes; longer lines are refused without being held in memory


class Worker:
    def __init__(self, out):
        self.out = out
        self.out_lock = threading.Lock()
        self.requests: queue.Queue[Request] = queue.Queue()  # valid requests, read once on arrival, in order
        self.cancelled: set = set()
        self.client_gone = False  # stdin closed: a running job stops at its next step
        self.models: dict = {}
        # a handler per request of protocol.REQUESTS: each takes its request, read on arrival, and sends its reply
        self.handlers = {Generate.type: self.generate, Reroll.type: self.reroll, GetInfo.type: self.info,
                         Ping.type: self.ping}

    def send(self, reply: Reply) -> None:
        with self.out_lock:
            try:
                self.out.write(encode(reply.to_wire()))
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
            msg = None
            try:
                if not raw.endswith(b"\n") and len(raw) >= MAX_LINE:
                    while (rest := stdin.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                        pass  # drop the rest of the over-long line
                    raise ProtocolError(f"request line longer than {MAX_LINE} bytes")
                msg = decode(raw, "the client")
                request = read_request(msg)  # checked on arrival: a bad request is answered at once, even mid-job
            except Exception as e:  # a malformed line (deep nesting, bad UTF-8, bad fields ...) is answered, not fatal
                message = str(e) if isinstance(e, ProtocolError) else f"malformed request ({type(e).__name__})"
                job_id = msg.get("id") if msg is not None and valid_id(msg.get("id")) else None
                self.send(Error(id=job_id, kind=ErrorKind.PROTOCOL, message=message))
                continue
            if isinstance(request, Cancel):
                self.cancelled.add(request.id)
            else:
                self.requests.put(request)
        self.client_gone = True
        self.requests.put(Shutdown())  # stdin closed: the client is gone

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

    def handle(self, request: Request) -> None:
        """Answer a valid request through its handler."""
        self.handlers[request.type](request)

    def ping(self, request: Ping) -> None:
        self.send(Pong(id=request.id))

    def info(self, request: GetInfo) -> None:
        ckpt, _, _ = self.model(request.checkpoint, "cpu")
        self.send(Info(id=request.id, skeleton=ckpt.skeleton.name, config=ckpt.config.to_dict(),
                       provenance=ckpt.provenance, sha256=ckpt.sha256, source_format=ckpt.source_format))

    def generate(self, request: Generate) -> None:
        from .pipeline import generate_file
        settings = GenerationSettings.from_dict(request.settings)
        self.run_job(request, lambda ckpt, progress, cancel: generate_file(ckpt, request.audio, request.output,
                                                                           settings, progress, cancel))

    def reroll(self, request: Reroll) -> None:
        from .reroll import reroll_file
        if len(request.range) != 2:
            raise ValueError(f"reroll request: 'range' must be [start, end], not {request.range!r:.60}")
        GenerationSettings.from_dict(request.settings)  # unknown or mistyped names are refused before anything runs
        self.run_job(request, lambda ckpt, progress, cancel: reroll_file(
            ckpt, request.result, request.audio, request.output, *request.range, request.settings, progress, cancel))

    def run_job(self, request: ResultRequest, job) -> None:
        """Run job(checkpoint, progress, cancel) -> summary for a request that writes a result file, sending its
        progress and its Result; on a GPU out of memory the whole request runs again on the CPU."""
        import torch
        last = [0.0]

        def progress(p) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or p.step == p.steps:
                last[0] = now
                self.send(Progress(id=request.id, window=p.window, windows=p.windows, step=p.step, steps=p.steps,
                                   fraction=round(p.fraction, 4)))

        def run(device: str) -> tuple[dict, list[str]]:
            ckpt, _, note = self.model(request.checkpoint, device)
            summary = job(ckpt, progress, lambda: self.client_gone or request.id in self.cancelled)
            return summary, [note] if note else []
        try:
            summary, notes = run(request.device)
        except torch.cuda.OutOfMemoryError:  # loading the model or generating: the whole request goes to the CPU
            self.models.clear()
            torch.cuda.empty_cache()
            summary, notes = run("cpu")
            notes.append("the GPU ran out of memory; this generation was retried on the CPU")
        self.send(Result(id=request.id, output=request.output, notes=notes,
                         checkpoint=str(resolve_checkpoint(request.checkpoint)), summary=summary))

    def serve(self) -> None:
        torch = import_torch()
        from .cpu import governor
        threads = governor(spare_cores())
        threading.Thread(target=self.read_stdin, daemon=True).start()
        cuda = torch.cuda.is_available()
        self.send(Ready(protocol=PROTOCOL_VERSION, torch=torch.__version__, cuda=cuda, cuda_version=torch.version.cuda,
                        device_name=torch.cuda.get_device_name(0) if cuda else "CPU", pid=os.getpid(),
                        python=sys.executable, threads=threads.adapt(), max_threads=threads.most))
        while True:
            request = self.requests.get()
            if isinstance(request, Shutdown):
                return
            try:
                self.handle(request)
            except Exception as e:  # every failure becomes a readable message for the client
                kind = ErrorKind.of_exception(e)
                self.send(Error(id=request.id, kind=kind, message=str(e) or type(e).__name__))
                if kind is ErrorKind.INTERNAL:
                    traceback.print_exc(file=sys.stderr)
            finally:
                self.cancelled.discard(request.id)


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
