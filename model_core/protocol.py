"""The worker protocol, shared by the worker (torch side) and its clients (Blender side): stdlib + numpy only.

Messages are JSON objects, one per line, prefixed with a tag and the protocol version ("DGW1 {...}\\n"), on the
worker's stdin (requests) and stdout (replies). Anything else the worker's stdout carries is a protocol error.
Results are not sent inline: the worker writes an .npz (see write_result) and replies with its path.

Requests:  generate {id, audio, checkpoint, device, settings, output} · info {id, checkpoint} · ping {id}
           (each answered by the reply REQUESTS names, or by an error) · cancel {id} · shutdown
Replies:   ready {protocol, torch, cuda, device_name, pid} (unprompted, once) · progress {id, window, windows,
           step, steps, fraction} · result {id, ...} · info {id, ...} · pong {id} · error {id, kind, message}
The client that starts a worker and speaks this protocol is client.py.
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import numpy as np

PROTOCOL_VERSION = 1
TAG = f"DGW{PROTOCOL_VERSION} "
RESULT_FORMAT = "diffgesture-poses"
# Each request type and the reply type that answers it: adding a request is a line here and a handler in worker.py.
REQUESTS: dict[str, str] = {"generate": "result", "info": "info", "ping": "pong"}
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


def decode(line: bytes | str) -> dict:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if not text.startswith(TAG):
        raise ProtocolError(f"unexpected output from the worker: {text[:200]!r}")
    try:
        msg = json.loads(text[len(TAG):])
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed message from the worker ({e}): {text[:200]!r}") from None
    if not isinstance(msg, dict) or "type" not in msg:
        raise ProtocolError(f"message without a type: {text[:200]!r}")
    return msg


def write_result(path: str | Path, poses: np.ndarray, directions: np.ndarray, meta: dict) -> None:
    """Save generated motion: normalised poses (V, F, D), canonical unit directions (V, F, bones, 3), metadata."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, poses=poses.astype(np.float32), directions=directions.astype(np.float32),
             meta=np.array(json.dumps({"format": RESULT_FORMAT, **meta})))
    tmp.replace(path)


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
