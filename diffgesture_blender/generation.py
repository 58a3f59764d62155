"""One generation from a validated request to its summary: the state machine shared by the operator and headless.

STARTING (a thread starts the worker and sends the request) -> RUNNING (the job is polled on the main thread)
-> ENDED (result, error or cancel). Nothing touches bpy data until `conclude`, which hands a complete result to
scene_writer; a failed or cancelled generation leaves the .blend exactly as it was. One generation at a time.
"""
from __future__ import annotations

import enum
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import bpy

from . import scene_writer, shared, takes
from .request import Request, UsageError, checkpoint_file, validate, worker_audio
from .session import SESSION

ErrorKind, WorkerError = shared.protocol.ErrorKind, shared.client.WorkerError


class GenerationFailed(RuntimeError):
    """A generation that ended without changing the .blend; the message says why and that nothing was changed."""


class Stage(enum.Enum):
    STARTING = "starting"  # the worker is being started and the request sent, in a thread
    RUNNING = "running"  # the worker has the request; its job is polled
    ENDED = "ended"  # result, error or cancel: conclude() says which


class Generation:
    """A validated request: `begin`, then `poll` (non-blocking) or `wait`, then `conclude` writes the result."""

    def __init__(self, request: Request):
        self.request = request
        armature, self.mapping = validate(request)
        self.armature_name = armature.name  # a name, not a reference: undo may replace the object meanwhile
        self.tmp = Path(tempfile.mkdtemp(prefix="diffgesture-"))
        try:
            self.audio = worker_audio(request, self.tmp)  # a packed sound's copy is written into tmp
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise UsageError(f"cannot write the packed sound {request.sound!r} for the worker: {e}") from None
        self.output = self.tmp / "result.npz"
        self.stage = Stage.STARTING
        self.notes: list[str] = []
        self.job: shared.client.Job | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self._starter: threading.Thread | None = None

    @classmethod
    def create(cls, request: Request) -> "Generation":
        """Validate and register as the active generation (a Reroll when the request re-rolls a range); refuse
        when one is already running."""
        if SESSION.generation is not None:
            raise UsageError("a generation is already running: wait for it or press Esc to cancel it")
        SESSION.generation = (Reroll if request.reroll is not None else cls)(request)
        return SESSION.generation

    def begin(self) -> None:
        """Start the worker and send the request, always in a thread (importing torch takes seconds)."""
        self._starter = threading.Thread(target=self._start, daemon=True)
        self._starter.start()

    def _start(self) -> None:
        r = self.request
        try:
            _, notes = SESSION.worker.start(r.python)
            self.notes += notes
            if self.cancelled:
                return
            self.job = self.submit(SESSION.worker.client(r.python))
            if self.cancelled:  # cancelled while the request was being sent
                self.job.cancel()
        except WorkerError as e:
            self.error = e

    def submit(self, client: shared.client.WorkerClient) -> shared.client.Job:
        """Send this generation's request to the worker."""
        r = self.request
        return client.generate(self.audio, self.output, str(checkpoint_file(r.checkpoint)), r.device,
                               r.settings.to_dict())

    def write(self, scene: bpy.types.Scene, result: dict, notes: list[str]) -> scene_writer.Summary:
        """Put a read result file into the scene (through the scene writer)."""
        return scene_writer.write_motion(scene, self.request, self.armature_name, self.mapping, result, notes)

    def poll(self) -> bool:
        """Advance without blocking; True once the generation has ended (result, error or cancel)."""
        if self.stage is Stage.STARTING:
            if self._starter is not None and self._starter.is_alive():
                return False
            self.stage = Stage.RUNNING if self.job is not None else Stage.ENDED
        if self.stage is Stage.RUNNING and self.job.poll():
            self.stage = Stage.ENDED
        return self.stage is Stage.ENDED

    def wait(self, on_progress: Callable[[shared.protocol.Progress], None] | None = None) -> None:
        """Block until the generation ends (headless, scripts); errors are kept for `conclude`."""
        if self._starter is not None:
            self._starter.join()
        if self.job is not None:
            try:
                self.job.wait(on_progress=on_progress)
            except WorkerError:
                pass
        self.stage = Stage.ENDED

    def cancel(self) -> None:
        self.cancelled = True
        if self.job is not None:
            self.job.cancel()

    @property
    def fraction(self) -> float:
        return self.job.progress.fraction if self.job is not None and self.job.progress is not None else 0.0

    def status(self) -> str:
        if self.job is None:
            return "Starting the torch worker..."
        p = self.job.progress
        if p is None:
            return "Loading the checkpoint..."
        return f"Generating: window {min(p.window + 1, p.windows)}/{p.windows} ({100 * p.fraction:.0f}%)"

    def was_cancelled(self) -> bool:
        """The user cancelled (Esc, or a file was opened): information, not an error."""
        err = self.error or (self.job.error if self.job is not None else None)
        return self.cancelled or getattr(err, "kind", None) is ErrorKind.CANCELLED

    def failure(self) -> str | None:
        """Why the generation did not produce a result (None when it did); says that nothing was changed."""
        err = self.error or (self.job.error if self.job is not None else None)
        kind = getattr(err, "kind", None)
        if self.was_cancelled():
            return "Generation cancelled; nothing was changed"
        if err is None:
            return None
        if kind in (ErrorKind.CRASHED, ErrorKind.WORKER):
            return f"{err}. Nothing was changed; the worker will be restarted on the next Generate"
        return f"{err}. Nothing was changed"

    def conclude(self, scene: bpy.types.Scene) -> scene_writer.Summary:
        """Once ended: write the result into the scene and return its summary, or raise GenerationFailed."""
        failure = self.failure()
        if failure:
            raise GenerationFailed(failure)
        try:
            result = shared.protocol.read_result(self.output)
            return self.write(scene, result, self.notes + self.job.result.notes)
        except Exception as e:  # the writer undid its changes; whatever went wrong, the caller gets one failure type
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GenerationFailed(f"Could not apply the motion: {detail}. Nothing was changed") from None

    def close(self) -> None:
        """Forget this generation (it is no longer active) and delete its temporary files."""
        if SESSION.generation is self:
            SESSION.generation = None
        shutil.rmtree(self.tmp, ignore_errors=True)


class Reroll(Generation):
    """Scene frames request.reroll of the armature's current generated action sampled again with the request's
    seed: the worker gets the take (from the action's record) and the 15 fps frames to redo; only keys inside the
    range are written."""

    def __init__(self, request: Request):
        super().__init__(request)
        try:
            action, self.take = takes.current(bpy.data.objects[self.armature_name])
            self.action_name = action.name
            self.model_frames = self.take.model_range(*request.reroll)
            self.take_file = self.tmp / "take.npz"
            self.take.write_result(self.take_file)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def submit(self, client: shared.client.WorkerClient) -> shared.client.Job:
        r = self.request
        return client.reroll(self.take_file, self.audio, self.model_frames, self.output,
                             str(checkpoint_file(r.checkpoint)), r.device, {"seed": r.settings.seed})

    def write(self, scene: bpy.types.Scene, result: dict, notes: list[str]) -> scene_writer.Summary:
        first, last = self.request.reroll
        scene_writer.rekey_take(scene, self.armature_name, self.take, result["poses"][0], (first, last),
                                reroll=[first, last, self.request.settings.seed])
        meta = result["meta"]
        return scene_writer.Summary(audio=str(self.request.audio), armature=self.armature_name,
                                    actions=[self.action_name], frame_start=first, frame_end=last,
                                    duration=meta["duration"], skeleton=meta["skeleton"], sound_strip=None,
                                    seconds=meta["seconds"], device=meta["device"], notes=notes)


def active() -> Generation | None:
    """The generation in flight, if any (one at a time)."""
    return SESSION.generation


@bpy.app.handlers.persistent
def drop_on_load(*_args) -> None:
    """A file is being opened: the running generation (if any) is cancelled, its result would have nowhere to go."""
    if SESSION.generation is not None:
        SESSION.generation.cancel()
        SESSION.generation.close()
