"""The worker protocol, shared by the worker (torch side) and its clients (Blender side): stdlib + numpy only.

Messages are JSON objects, one per line, prefixed with a tag and the protocol version ("DGW1 {...}\\n"), on the
worker's stdin (requests) and stdout (replies). Anything else the worker's stdout carries is a protocol error.
Results are not sent inline: the worker writes an .npz (see write_result) and replies with its path.

Requests:  generate {id, audio, checkpoint, device, settings, output} · reroll {id, result, audio, range, checkpoint,
           device, settings, output} (frames range[0]..range[1] of an earlier result file, 15 fps, inclusive, sampled
           again with the settings given over the take's own; a new result file) · info {id, checkpoint} · ping {id}
           (each answered by the reply REQUESTS names, or by an error) · cancel {id} · shutdown
Replies:   ready {protocol, torch, cuda, device_name, pid, threads, max_threads} (unprompted, once; threads: those
           the load allows now, model_core/cpu.py) · progress {id, window, windows, step, steps, fraction} ·
           result {id, ...} · info {id, ...} · pong {id} · error {id, kind, message}
The client that starts a worker and speaks this protocol is client.py.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from enum import Enum
from pathlib import Path

import numpy as np

PROTOCOL_VERSION = 1
TAG = f"DGW{PROTOCOL_VERSION} "
RESULT_FORMAT = "diffgesture-poses"
# Each request type and the reply type that answers it: adding a request is a line here and a handler in worker.py.
REQUESTS: dict[str, str] = {"generate": "result", "reroll": "result", "info": "info", "ping": "pong"}
# Requests about other requests or the worker itself; they get no reply.
CONTROLS = ("cancel", "shutdown")


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


class ProtocolError(RuntimeError):
    """A line that is not a protocol message (for example stray output from a library in the worker)."""


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


def error_reply(request_id: str | None, kind: ErrorKind, message: str) -> dict:
    """The error message that answers a request (id None: a line that could not be read as a request)."""
    return {"type": "error", "id": request_id, "kind": kind.value, "message": message}
