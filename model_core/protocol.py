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
import math
import zipfile
import zlib
from enum import Enum
from pathlib import Path

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
# Each request type and the reply type that answers it: adding a request is a line here and a handler in worker.py.
REQUESTS: dict[str, str] = {"generate": "result", "reroll": "result", "info": "info", "ping": "pong"}


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


def error_reply(request_id: str | None, kind: ErrorKind, message: str) -> dict:
    """The error message that answers a request (id None: a line that could not be read as a request)."""
    return {"type": "error", "id": request_id, "kind": kind.value, "message": message}
