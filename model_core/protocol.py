"""The worker protocol, shared by the worker (torch side) and its clients (Blender side): stdlib + numpy only.

Messages are JSON objects, one per line, prefixed with a tag and the protocol version ("DGW1 {...}\\n"), on the
worker's stdin (requests) and stdout (replies). Anything else the worker's stdout carries is a protocol error.
Each message type is a class below, its fields typed; `to_wire` and `from_wire` write and read its JSON object
({"type": TYPE, **fields}). Each request names its reply: generate and reroll are answered by a Result, info by an
Info, ping by a Pong, any of them by an Error instead; cancel and shutdown get none. The worker also sends Progress
while it works and, once, unprompted, Ready. Adding a request is a class here and a handler in worker.py.
Results are not sent inline: the worker writes an .npz (see write_result) and replies with its path.
The client that starts a worker and speaks this protocol is client.py.
"""
from __future__ import annotations

import functools
import json
import math
import types
import typing
import zipfile
import zlib
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import ClassVar

import numpy as np

from .files import check_output, parse_json, replacing

PROTOCOL_VERSION = 1
TAG = f"DGW{PROTOCOL_VERSION} "
RESULT_FORMAT = "diffgesture-poses"
# A result's version: 2 holds the poses as sampled, their intensity in meta["settings"]; 1 (no "version" field, by
# earlier versions) held them scaled by it. Directions are at the intensity in both.
RESULT_VERSION = 2
MAX_META_BYTES = 1 << 20  # a result's metadata is a few hundred bytes of JSON
MAX_TAKE_SECONDS = 3600  # a take longer than an hour is not re-rolled or rescaled (its poses would be 6.8 M values)
MAX_ID_CHARS = 200


class ErrorKind(str, Enum):
    """Why a request failed. The worker sends: audio, checkpoint, settings, cancelled, protocol, internal. The
    client finds the rest itself (never sent): environment (no usable worker), worker (stopped: hung, killed,
    connection lost), crashed (exited during a request)."""

    AUDIO = "audio"
    CHECKPOINT = "checkpoint"
    SETTINGS = "settings"
    CANCELLED = "cancelled"
    PROTOCOL = "protocol"
    INTERNAL = "internal"
    ENVIRONMENT = "environment"
    WORKER = "worker"
    CRASHED = "crashed"

    @classmethod
    def of_exception(cls, e: BaseException) -> ErrorKind:
        """The kind the worker reports a failed request with: the exception's own `kind` (AudioError,
        CheckpointError, Cancelled, ProtocolError declare theirs); any other bad value is the settings'."""
        kind = getattr(type(e), "kind", None)
        if isinstance(kind, cls):
            return kind
        return cls.SETTINGS if isinstance(e, (ValueError, TypeError)) else cls.INTERNAL

    @classmethod
    def from_wire(cls, name: object) -> ErrorKind:
        """An error reply's kind as the client reads it; one this client does not know reads as internal."""
        try:
            return cls(name)
        except ValueError:
            return cls.INTERNAL


class ProtocolError(RuntimeError):
    """A line that is not a protocol message (for example stray output from a library in the worker), or a message
    whose fields are missing or of the wrong type."""

    kind = ErrorKind.PROTOCOL


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


def _runtime_types(hint: object) -> tuple[type, ...]:
    """The classes a value of a field's annotation may be on the wire (list[str] -> list, float accepts int)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _runtime_types(arg))
    hint = typing.get_origin(hint) or hint
    return (int, float) if hint is float else (type(None),) if hint is None else (hint,)


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field of a message class and the classes its value may be on the wire. The annotations are evaluated in
    this module alone (localns={}): in the class's own namespace `type` is the message's type name."""
    hints = typing.get_type_hints(cls, localns={})
    return {f.name: _runtime_types(hints[f.name]) for f in fields(cls)}


@dataclass(kw_only=True)
class Message:
    """A protocol message: on the wire {"type": TYPE, **fields}. Fields unknown to this side are ignored on
    reading (a newer peer may add some); a missing required field or one of the wrong type is a ProtocolError."""

    type: ClassVar[str]
    direction: ClassVar[str]  # "request" or "reply", for the errors

    def to_wire(self) -> dict:
        """The JSON object that carries this message (encode writes it as a line)."""
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_wire(cls, msg: dict) -> typing.Self:
        """A decoded message (decode) of this class's type as the message it is, or a ProtocolError."""
        if not valid_id(msg.get("id")):
            raise ProtocolError(f"{cls.type} {cls.direction}: 'id' must be a string or an integer, not "
                                f"{msg['id']!r:.60}")
        for name, expected in _field_types(cls).items():
            if name in msg and not isinstance(msg[name], expected):
                names = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
                raise ProtocolError(f"{cls.type} {cls.direction}: {name!r} must be a {names}, not "
                                    f"{type(msg[name]).__name__}")
        missing = [repr(f.name) for f in fields(cls)
                   if f.name not in msg and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ProtocolError(f"{cls.type} {cls.direction} lacks {', '.join(missing)}")
        return cls(**{f.name: msg[f.name] for f in fields(cls) if f.name in msg})


def valid_id(value: object) -> bool:
    """Whether a message's id is absent (None) or a string or an integer (not a bool) of at most MAX_ID_CHARS
    characters."""
    return value is None or (type(value) is str and len(value) <= MAX_ID_CHARS) or (
        type(value) is int and abs(value) < 10 ** (MAX_ID_CHARS - 1))


@dataclass(kw_only=True)
class Reply(Message):
    """A message from the worker; its wire fields can also be read by name (reply["type"], result["frames"]), as
    scripts and tests that read the JSON do."""

    direction: ClassVar[str] = "reply"

    def __getitem__(self, name: str) -> object:
        return self.to_wire()[name]


@dataclass(kw_only=True)
class Ready(Reply):
    """Sent once, unprompted, when the worker is ready: its protocol, torch and CUDA, device, process and threads
    (threads: those the load allows now, max_threads: the most it will use; model_core/cpu.py)."""

    type: ClassVar[str] = "ready"
    protocol: int | None = None
    torch: str = ""
    cuda: bool = False
    cuda_version: str | None = None
    device_name: str = ""
    pid: int = 0
    python: str = ""
    threads: int = 0
    max_threads: int = 0


@dataclass(kw_only=True)
class Progress(Reply):
    """How far a request has come: denoising step `step` of `steps` in window `window` of `windows`."""

    type: ClassVar[str] = "progress"
    id: str | int | None = None
    window: int = 0
    windows: int = 0
    step: int = 0
    steps: int = 0
    fraction: float = 0.0


@dataclass(kw_only=True)
class Result(Reply):
    """A result file was written: where, from which checkpoint, notes for the user and the pipeline's summary
    (frames, variations and the file's metadata: pipeline.save_result), whose fields are flat on the wire."""

    type: ClassVar[str] = "result"
    id: str | int | None = None
    output: str = ""
    checkpoint: str = ""
    notes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def to_wire(self) -> dict:
        wire = super().to_wire()
        summary = wire.pop("summary")
        return {**wire, **summary}

    @classmethod
    def from_wire(cls, msg: dict) -> Result:
        own = {f.name for f in fields(cls)} - {"summary"}
        return super().from_wire({**{k: v for k, v in msg.items() if k in own},
                                  "summary": {k: v for k, v in msg.items() if k not in own and k != "type"}})


@dataclass(kw_only=True)
class Info(Reply):
    """A checkpoint's description: its skeleton, model configuration, provenance, digest and source format."""

    type: ClassVar[str] = "info"
    id: str | int | None = None
    skeleton: str = ""
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    sha256: str = ""
    source_format: str = ""


@dataclass(kw_only=True)
class Pong(Reply):
    """The answer to a ping."""

    type: ClassVar[str] = "pong"
    id: str | int | None = None


@dataclass(kw_only=True)
class Error(Reply):
    """A request failed (id None: a line that could not be read as a request); `kind` says why."""

    type: ClassVar[str] = "error"
    id: str | int | None = None
    kind: ErrorKind = ErrorKind.INTERNAL
    message: str = "worker error"

    def to_wire(self) -> dict:
        return {**super().to_wire(), "kind": self.kind.value}

    @classmethod
    def from_wire(cls, msg: dict) -> Error:
        return super().from_wire({**msg, "kind": ErrorKind.from_wire(msg.get("kind"))})


@dataclass(kw_only=True)
class Request(Message):
    """A message to the worker; `reply` is the class of the message that answers it (None: no answer)."""

    direction: ClassVar[str] = "request"
    reply: ClassVar[type[Reply] | None] = None
    id: str | int | None = None


@dataclass(kw_only=True)
class ResultRequest(Request):
    """A request that samples motion for `audio` into a new result file (`output`), answered by a Result."""

    reply: ClassVar[type[Reply]] = Result
    audio: str
    output: str
    checkpoint: str = "default"
    device: str = "auto"
    settings: dict = field(default_factory=dict)  # settings.GenerationSettings by name


@dataclass(kw_only=True)
class Generate(ResultRequest):
    """Generate motion for the whole audio file with `settings`."""

    type: ClassVar[str] = "generate"


@dataclass(kw_only=True)
class Reroll(ResultRequest):
    """Sample frames range[0]..range[1] (15 fps, inclusive) of an earlier result file again, with `settings` over
    the take's own."""

    type: ClassVar[str] = "reroll"
    result: str
    range: list


@dataclass(kw_only=True)
class GetInfo(Request):
    """Describe a checkpoint."""

    type: ClassVar[str] = "info"
    reply: ClassVar[type[Reply]] = Info
    checkpoint: str = "default"


@dataclass(kw_only=True)
class Ping(Request):
    """Answer at once (a round trip; the worker is alive)."""

    type: ClassVar[str] = "ping"
    reply: ClassVar[type[Reply]] = Pong


@dataclass(kw_only=True)
class Cancel(Request):
    """Stop the request `id` at its next denoising step (it then fails as cancelled)."""

    type: ClassVar[str] = "cancel"


@dataclass(kw_only=True)
class Shutdown(Request):
    """Exit once the running request (if any) has ended."""

    type: ClassVar[str] = "shutdown"


# The requests a worker handler answers, by type; the worker's loop acts on the others itself, without a reply.
REQUESTS: dict[str, type[Request]] = {c.type: c for c in (Generate, Reroll, GetInfo, Ping)}
LOOP_REQUESTS: dict[str, type[Request]] = {c.type: c for c in (Cancel, Shutdown)}


def read_request(msg: dict) -> Request:
    """A decoded message as the request it is; ProtocolError for an unknown type or bad fields."""
    kind = msg["type"]
    cls = (REQUESTS.get(kind) or LOOP_REQUESTS.get(kind)) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown request type {kind!r:.60}")
    return cls.from_wire(msg)


def check_result_output(path: str | Path, keep: tuple = ()) -> Path:
    """Where a result file may go (files.check_output): a new file, or an earlier DiffGesture result that is none of
    the `keep` files (the inputs). Checked before generating."""
    return check_output(path, keep, ours=is_result_file)


def is_result_file(path: Path) -> bool:
    """Whether a file is a result written by write_result (an .npz holding exactly poses, directions and meta)."""
    try:
        with zipfile.ZipFile(path) as z:
            return sorted(z.namelist()) == ["directions.npy", "meta.npy", "poses.npy"]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def write_result(path: str | Path, poses: np.ndarray, directions: np.ndarray, meta: dict) -> None:
    """Save generated motion: normalised poses as sampled (V, F, D), canonical unit directions at the intensity of
    meta["settings"] (V, F, bones, 3), metadata. Written to a new temporary file beside `path` and renamed over it;
    nothing is left behind when writing fails."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, poses=poses.astype(np.float32), directions=directions.astype(np.float32),
                 meta=np.array(json.dumps({"format": RESULT_FORMAT, "version": RESULT_VERSION, **meta})))


def check_take(meta: dict, shape: tuple, source: str) -> None:
    """Refuse a take (a result file's meta and poses shape (V, F, D), or a Blender take record's) whose fields are
    of the wrong type or out of range, or whose poses are not what its skeleton and duration make: checked before
    the poses are read or anything is sized after them. ValueError naming `source` and the field."""
    from .settings import RANGES
    from .skeleton import SKELETONS

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{source} is damaged: {field} {why}; generate it again")
    if not isinstance(meta, dict):
        raise bad("its metadata", "is not a table")
    if not isinstance(meta.get("settings", {}), dict):
        raise bad("'settings'", f"must be a table, not {type(meta['settings']).__name__}")
    skel = SKELETONS.get(meta.get("skeleton")) if isinstance(meta.get("skeleton"), str) else None
    if skel is None:
        raise bad("'skeleton'", f"is {str(meta.get('skeleton'))[:40]!r}, not one of {', '.join(SKELETONS)}")
    duration = meta.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration <= MAX_TAKE_SECONDS:
        raise bad("'duration'", f"must be a number of seconds within 0..{MAX_TAKE_SECONDS}, not "
                                f"{str(duration)[:40]}")
    fps = meta.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 1000:
        raise bad("'fps'", f"must be a frame rate within 1..1000, not {str(fps)[:40]}")
    low, high = RANGES["variations"]
    most = math.ceil((duration + 5) * fps)  # whole windows end at most 2 s past the audio, a fade 8 frames later
    if not (len(shape) == 3 and low <= shape[0] <= high and 1 <= shape[1] <= most and shape[2] == skel.pose_dim):
        raise bad("its poses", f"have shape {tuple(shape)[:4]}; a {duration:.1f} s take of {skel.name} holds "
                               f"(variations {low}..{high}, at most {most} frames, {skel.pose_dim})")


def result_header(path: str | Path) -> tuple[dict, tuple]:
    """A result file's metadata and its poses' shape, read without reading the poses (a take is checked by
    check_take before they are); ValueError when the file is not a readable result."""
    try:
        with zipfile.ZipFile(path) as z:
            if z.getinfo("meta.npy").file_size > MAX_META_BYTES:
                raise ValueError(f"{Path(path).name} is damaged: its metadata is over {MAX_META_BYTES >> 10} KiB")
            with z.open("meta.npy") as f:
                meta = np.lib.format.read_array(f, allow_pickle=False)
            with z.open("poses.npy") as f:
                version = np.lib.format.read_magic(f)
                shape = (np.lib.format.read_array_header_1_0(f) if version == (1, 0) else
                         np.lib.format.read_array_header_2_0(f))[0]
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
        raise ValueError(f"{Path(path).name} is not a readable DiffGesture result ({type(e).__name__})") from None
    return parse_json(str(meta), f"the metadata of {Path(path).name}"), tuple(shape)


def read_result(path: str | Path) -> dict:
    """Load a result file: {'poses', 'directions', 'meta'} (meta holds skeleton, fps, seed, checkpoint hash ...);
    ValueError when it is damaged (a member that fails its checksum or does not decompress)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != RESULT_FORMAT:
                raise ValueError(f"{path} is not a DiffGesture result file")
            return {"poses": z["poses"], "directions": z["directions"], "meta": meta}
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{Path(path).name} is not a readable DiffGesture result ({type(e).__name__})") from None


def sampled_poses(result: dict, source: str) -> np.ndarray:
    """A read result's poses as sampled, whichever version wrote it (RESULT_VERSION); ValueError naming `source`
    for a version this code does not know, or a first-version result at intensity 0 (skeleton.as_sampled)."""
    from .skeleton import as_sampled
    meta = result["meta"]
    version = meta.get("version", 1)
    if type(version) is not int or not 1 <= version <= RESULT_VERSION:
        raise ValueError(f"{source} is a result of version {str(version)[:20]}, which this version of DiffGesture "
                         f"does not read (1..{RESULT_VERSION}): update DiffGesture")
    if version == 1:
        return as_sampled(result["poses"], float(meta.get("settings", {}).get("intensity", 1.0)), source)
    return result["poses"]

