"""One generation from request to keyframes, and the warm worker behind it; shared by the operator and headless.

A Generation validates everything before the worker is asked (audio, checkpoint, armature mapping), runs without
touching bpy data, and writes to the .blend only in `finish`, once the result is complete. So a failed or cancelled
generation leaves the file exactly as it was. The worker (a `WorkerClient` in the torch environment) starts lazily,
stays warm between generations, is restarted (and the restart reported) when it died, and stops at Blender exit.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import bone_maps, core, retarget

DEFAULT_CHECKPOINT = core.protocol.DEFAULT_CHECKPOINT
PARTS = ("spine", "arms", "fingers")
MAX_CHANNELS = 128  # the sequencer's channels
MIN_FPS, MAX_FPS = 1, 1000  # scene frame rates keys are written at (Blender allows up to 32767 / 0.0001)

_client: core.protocol.WorkerClient | None = None
_restarts_seen = 0
_start_lock = threading.Lock()
_active: "Generation | None" = None
_check: dict = {}


class UsageError(ValueError):
    """A request that cannot run (missing file, unknown armature, unusable mapping); nothing was started."""


class GenerationFailed(RuntimeError):
    """A generation that ended without changing the .blend; the message says why and that nothing was changed."""


@dataclass
class Request:
    """Everything a generation needs, as plain values gathered from the panel or the command line."""
    audio: Path
    armature: str
    python: str
    checkpoint: str = "default"
    device: str = "auto"
    settings: dict = field(default_factory=dict)
    start_frame: int = 1
    add_sound: bool = True
    parts: frozenset[str] = frozenset(PARTS)
    nla_strip: bool = False
    allow_partial: bool = False  # drive the mapped bones even when required roles are unmapped


def sampling_settings(sampler: str, steps: int, seed: int, variations: int, guidance: float,
                      stabilizer: bool) -> dict:
    """model_core GenerationSettings fields for the panel's or command line's choices (paper: official BN mode)."""
    settings = {"sampler": sampler, "seed": seed, "variations": variations, "guidance": guidance,
                "stabilizer": stabilizer}
    settings.update({"steps": steps} if sampler == "fast" else {"bn_mode": "official"})
    return settings


# -- worker lifecycle --------------------------------------------------------------------------------------------
def client(python: str) -> core.protocol.WorkerClient:
    """The shared worker client for this interpreter; a different interpreter replaces (and stops) the old one."""
    global _client, _restarts_seen
    if _client is not None and _client.python != str(python):
        _client.shutdown()
        _client = None
    if _client is None:
        _client = core.protocol.WorkerClient(python, core_parent=core.CORE_PARENT)
        _restarts_seen = 0
    return _client


def start_worker(python: str) -> tuple[dict, list[str]]:
    """Start the worker if needed; return its ready message and notes (e.g. that a dead worker was restarted)."""
    global _restarts_seen
    with _start_lock:
        c = client(python)
        info = c.start()
        notes = []
        if c.restarts > _restarts_seen:
            notes.append("the previous worker had stopped; a new one was started")
            _restarts_seen = c.restarts
        return info, notes


def worker_pid() -> int | None:
    return _client.proc.pid if _client is not None and _client.alive() else None


def shutdown_worker() -> None:
    """Stop the worker (Blender exit, add-on disabled, interpreter changed)."""
    global _client
    if _client is not None:
        _client.shutdown()
        _client = None


def check_worker(python: str) -> None:
    """Start the worker in a thread and record what it reports (torch version, CUDA, GPU) for the preferences."""
    _check.clear()
    _check["state"] = "running"

    def run() -> None:
        try:
            info, notes = start_worker(python)
            _check.update(state="ok", info=info, notes=notes)
        except core.protocol.WorkerError as e:
            _check.update(state="error", message=str(e))
    threading.Thread(target=run, daemon=True).start()


def check_running() -> bool:
    return _check.get("state") == "running"


def check_report() -> list[str]:
    """The outcome of the last check, as lines for the preferences."""
    state = _check.get("state")
    if state == "running":
        return ["Checking: starting the worker..."]
    if state == "error":
        return [f"Check failed: {_check['message']}"]
    if state == "ok":
        info = _check["info"]
        cuda = f"CUDA {info.get('cuda_version')} available" if info.get("cuda") else "CUDA not available"
        return [f"torch {info.get('torch')}, {cuda}, device: {info.get('device_name')}",
                f"worker PID {info.get('pid')}, {info.get('python')}", *_check["notes"]]
    return []


@bpy.app.handlers.persistent
def drop_on_load(*_args) -> None:
    """A file is being opened: the running generation (if any) is cancelled, its result would have nowhere to go."""
    if _active is not None:
        _active.cancel()
        _active.close()


def active() -> "Generation | None":
    """The generation in flight, if any (one at a time)."""
    return _active


# -- inputs ------------------------------------------------------------------------------------------------------
def resolve_checkpoint(name: str) -> Path:
    """The protocol's resolution ('default' or empty: the bundled checkpoint), with Blender's // paths made absolute."""
    return core.protocol.resolve_checkpoint(bpy.path.abspath(name))


def audio_from_strip(scene: bpy.types.Scene, strip_name: str) -> tuple[Path, int]:
    """The file behind a sound strip (written out when packed) and the frame it starts at."""
    seq = scene.sequence_editor
    strip = seq.strips_all.get(strip_name) if seq is not None else None
    if strip is None or strip.type != "SOUND" or strip.sound is None:
        raise UsageError(f"no sound strip named {strip_name!r} in the sequencer")
    sound = strip.sound
    if sound.packed_file is not None:
        path = Path(bpy.app.tempdir) / (Path(sound.filepath).name or "packed.wav")
        path.write_bytes(sound.packed_file.data)
    else:
        path = Path(bpy.path.abspath(sound.filepath))
    return path, int(strip.frame_start)


def validate(request: Request) -> tuple[bpy.types.Object, dict[str, str]]:
    """Check the request against the file system and the scene; return the armature and its bone mapping."""
    audio = Path(request.audio)
    if not audio.exists():
        raise UsageError(f"audio file not found: {audio}")
    if not audio.is_file():
        raise UsageError(f"the audio path is not a file: {audio}")
    ckpt = resolve_checkpoint(request.checkpoint)
    if not ckpt.is_file():
        hint = " (the bundled checkpoint is missing: reinstall the extension)" if ckpt == DEFAULT_CHECKPOINT else ""
        raise UsageError(f"checkpoint not found: {ckpt}{hint}")
    obj = bpy.data.objects.get(request.armature)
    if obj is None or obj.type != "ARMATURE":
        raise UsageError(f"no armature object named {request.armature!r}" if obj is None else
                         f"{request.armature!r} is a {obj.type.lower()}, not an armature")
    if obj.library is not None or obj.data.library is not None:
        lib = (obj.library or obj.data.library).filepath
        raise UsageError(f"{obj.name!r} is linked from the library {lib} and cannot be animated here: make it local "
                         "(Object > Relations > Make Local) or add a library override (Object > Library Override)")
    if obj.mode == "EDIT":
        raise UsageError(f"{obj.name!r} is in edit mode: leave edit mode first")
    if not request.parts:
        raise UsageError("choose at least one part to drive (spine/head, arms, fingers)")
    mapping = bone_maps.get_bone_map(obj) or bone_maps.detect(obj).mapping
    problems = bone_maps.validate(obj, mapping, request.allow_partial)
    if problems:
        missing = bone_maps.missing_required(mapping)
        partial = (f", or allow a partial rig to animate only the mapped bones (unmapped: {', '.join(missing)})"
                   if missing and mapping and not request.allow_partial else "")
        raise UsageError(f"the bones of {obj.name!r} cannot be driven: {'; '.join(problems)}. Map them in the "
                         f"panel's Bones box{partial}")
    return obj, mapping


# -- one generation ----------------------------------------------------------------------------------------------
class Generation:
    """A validated request running in the worker; `poll` (non-blocking) or `wait`, then `finish` writes bpy data."""

    def __init__(self, request: Request):
        self.request = request
        armature, self.mapping = validate(request)
        self.armature_name = armature.name  # a name, not a reference: undo may replace the object meanwhile
        self.tmp = Path(tempfile.mkdtemp(prefix="diffgesture-"))
        self.output = self.tmp / "result.npz"
        self.notes: list[str] = []
        self.job: core.protocol.Job | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self._starter: threading.Thread | None = None

    @classmethod
    def create(cls, request: Request) -> "Generation":
        """Validate and register as the active generation; refuse when one is already running."""
        global _active
        if _active is not None:
            raise UsageError("a generation is already running: wait for it or press Esc to cancel it")
        _active = cls(request)
        return _active

    # starting: in a thread for the UI (importing torch takes seconds), inline for headless
    def begin(self, blocking: bool = False) -> None:
        if blocking:
            self._start()
        else:
            self._starter = threading.Thread(target=self._start, daemon=True)
            self._starter.start()

    def _start(self) -> None:
        try:
            _, notes = start_worker(self.request.python)
            self.notes += notes
        except core.protocol.WorkerError as e:
            self.error = e

    def _submit(self) -> None:
        r = self.request
        self.job = client(r.python).generate(r.audio, self.output, str(resolve_checkpoint(r.checkpoint)),
                                             r.device, r.settings)

    def poll(self) -> bool:
        """Advance without blocking; True once the generation has ended (result, error or cancel)."""
        if self.job is None:
            if self._starter is not None and self._starter.is_alive():
                return False
            if self.error is not None or self.cancelled:
                return True
            try:
                self._submit()
            except core.protocol.WorkerError as e:
                self.error = e
                return True
        return self.job.poll()

    def wait(self, on_progress=None) -> None:
        """Block until the generation ends (headless, scripts); errors are kept in `self.error`."""
        while self.job is None and not self.poll():
            if self._starter is not None:
                self._starter.join()
        if self.job is not None:
            try:
                self.job.wait(on_progress=on_progress)
            except core.protocol.WorkerError:
                pass

    def cancel(self) -> None:
        self.cancelled = True
        if self.job is not None:
            self.job.cancel()

    @property
    def fraction(self) -> float:
        return float(self.job.progress["fraction"]) if self.job is not None and self.job.progress else 0.0

    def status(self) -> str:
        if self.job is None:
            return "Starting the torch worker..."
        p = self.job.progress
        if not p:
            return "Loading the checkpoint..."
        return f"Generating: window {min(p['window'] + 1, p['windows'])}/{p['windows']} ({100 * p['fraction']:.0f}%)"

    def failure(self) -> str | None:
        """Why the generation did not produce a result (None when it did); says that nothing was changed."""
        err = self.error or (self.job.error if self.job is not None else None)
        if self.cancelled or (err is not None and getattr(err, "kind", "") == "cancelled"):
            return "Generation cancelled; nothing was changed"
        if err is None:
            return None
        kind = getattr(err, "kind", "")
        if kind == "crashed" or kind == "worker":
            return f"{err}. Nothing was changed; the worker will be restarted on the next Generate"
        return f"{err}. Nothing was changed"

    def conclude(self, scene: bpy.types.Scene) -> dict:
        """Once ended: write the result into the scene and return its summary, or raise GenerationFailed."""
        failure = self.failure()
        if failure:
            raise GenerationFailed(failure)
        try:
            return self.finish(scene)
        except Exception as e:  # finish undid its changes; whatever went wrong, the caller gets one failure type
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GenerationFailed(f"Could not apply the motion: {detail}. Nothing was changed") from None

    def finish(self, scene: bpy.types.Scene) -> dict:
        """Write the result into the .blend (actions, sound strip, frame range) and return a summary. What can be
        checked is checked first; should writing still fail, everything written so far is undone."""
        result = core.protocol.read_result(self.output)
        meta, directions = result["meta"], result["directions"]
        if not np.isfinite(directions).all():
            raise ValueError("the result holds non-finite values (NaN or Inf)")
        r = self.request
        obj = bpy.data.objects[self.armature_name]
        stem = Path(r.audio).stem
        names = [stem] if len(directions) == 1 else [f"{stem}.v{v + 1}" for v in range(len(directions))]
        fps = scene.render.fps / scene.render.fps_base
        if not MIN_FPS <= fps <= MAX_FPS:  # keys are resampled to the scene's rate: bound their number
            raise ValueError(f"the scene's frame rate is {fps:g} fps; set it within {MIN_FPS}-{MAX_FPS} fps "
                             "(Output Properties > Format)")
        end = r.start_frame + math.ceil(meta["duration"] * fps)
        channel = free_channel(scene, r.start_frame, end) if r.add_sound else None
        if r.add_sound and channel is None:
            self.notes.append(f"the sound strip was not added: all {MAX_CHANNELS} sequencer channels are busy over "
                              f"frames {r.start_frame}-{end}")
        actions, strip = [], None
        with undo_on_failure(scene, obj):
            for v in reversed(range(len(directions))):  # the first variation is applied last, so it stays assigned
                action = retarget.apply_motion(obj, directions[v], meta["skeleton"], self.mapping,
                                               src_fps=float(meta["fps"]), start_frame=r.start_frame,
                                               action_name=names[v], parts=set(r.parts), nla_strip=r.nla_strip,
                                               partial=r.allow_partial)
                action.use_fake_user = len(directions) > 1
                actions.insert(0, action.name)
            if channel is not None:
                strip = add_sound_strip(scene, r.audio, r.start_frame, channel)
            scene.frame_start = min(scene.frame_start, r.start_frame)
            scene.frame_end = max(scene.frame_end, end)
        return {"audio": str(r.audio), "armature": obj.name, "actions": actions, "frame_start": r.start_frame,
                "frame_end": end, "duration": meta["duration"], "skeleton": meta["skeleton"],
                "sound_strip": strip, "seconds": meta["seconds"], "device": meta["device"],
                "notes": self.notes + list(self.job.result.get("notes", []))
                + retarget.rig_notes(obj, self.mapping, meta["skeleton"], set(r.parts))}

    def close(self) -> None:
        """Forget this generation (it is no longer active) and delete its temporary files."""
        global _active
        if _active is self:
            _active = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_channel(scene: bpy.types.Scene, start: int, end: int) -> int | None:
    """The lowest sequencer channel with no strip over [start, end], or None when all are busy."""
    seq = scene.sequence_editor
    strips = seq.strips if seq is not None else []
    busy = {s.channel for s in strips if s.frame_final_start < end and s.frame_final_end > start}
    return next((c for c in range(1, MAX_CHANNELS + 1) if c not in busy), None)


def add_sound_strip(scene: bpy.types.Scene, audio: Path, start: int, channel: int) -> str:
    """Put the audio in the sequencer at `start` on `channel` (see free_channel)."""
    strip = scene.sequence_editor_create().strips.new_sound(Path(audio).stem, str(audio), channel, start)
    return strip.name


@contextmanager
def undo_on_failure(scene: bpy.types.Scene, obj: bpy.types.Object):
    """Run a block that writes a result into the .blend; if it raises, remove what it added (actions, NLA tracks,
    sound strips) and restore the armature's assignment and the frame range, then re-raise."""
    anim = obj.animation_data
    previous = anim.action if anim is not None else None
    before = {"actions": {a.as_pointer() for a in bpy.data.actions},
              "tracks": {t.as_pointer() for t in anim.nla_tracks} if anim is not None else set(),
              "strips": {s.as_pointer() for s in scene.sequence_editor.strips_all} if scene.sequence_editor else set(),
              "slot": anim.action_slot if anim is not None and previous is not None else None,
              "fake_user": previous.use_fake_user if previous is not None else None,
              "frames": (scene.frame_start, scene.frame_end)}
    try:
        yield
    except BaseException:
        if scene.sequence_editor is not None:
            for s in [s for s in scene.sequence_editor.strips if s.as_pointer() not in before["strips"]]:
                scene.sequence_editor.strips.remove(s)
        if obj.animation_data is not None:
            if anim is None:
                obj.animation_data_clear()
            else:
                for t in [t for t in anim.nla_tracks if t.as_pointer() not in before["tracks"]]:
                    anim.nla_tracks.remove(t)
                anim.action = previous
                if previous is not None and before["slot"] is not None:
                    anim.action_slot = before["slot"]
        if previous is not None:
            previous.use_fake_user = before["fake_user"]
        for a in [a for a in bpy.data.actions if a.as_pointer() not in before["actions"]]:
            bpy.data.actions.remove(a)
        scene.frame_start, scene.frame_end = before["frames"]
        raise
