"""The one rule for every file DiffGesture writes or reads on a user's say-so (stdlib only: the add-on imports it too).

Writing: a path may be a new file in an existing folder, or a file this project made (each writer says how it
recognises its own kind); never an input of the same run, a folder, a device, a FIFO, or a symbolic link (writing
through it would replace whatever it points at). Writers check every path before any work starts (check_output)
and write through a temporary file beside the target that is renamed over it at the end and removed when anything
fails (replacing), so a failure leaves no half-written file and no leftovers.

Reading a small file the user names (a bone map, a manifest, a JSON cache): read_small refuses anything but a
regular file before opening it (opening a FIFO blocks until someone writes to it) and anything over its size limit.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}  # what a folder of speech is searched for


class UnsafeOutput(ValueError):
    """An output path that must not be written; the message names the path and what to do."""


def _never(path: Path) -> bool:
    return False


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same existing file (hard links and other spellings included)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_output(path: str | Path, keep: Iterable[str | Path] = (), ours: Callable[[Path], bool] = _never,
                 what: str = "the output", kind: str = "a DiffGesture result") -> Path:
    """`path` if it may be written: a new file in an existing folder, or an existing regular file that `ours`
    recognises as this project's own kind (described by `kind`) and that is none of the `keep` files (this run's
    inputs). Otherwise UnsafeOutput saying why; nothing is touched. Checked before any work starts."""
    path = Path(path)
    if "\0" in str(path):
        raise UnsafeOutput(f"{what} path contains a NUL character: {str(path)!r}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a name too long, a parent that is a file ...
        raise UnsafeOutput(f"{what} cannot be written at {_short(path)}: {e.strerror or e}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafeOutput(f"{what} {path} is a symbolic link; refusing to write through it (name the file itself)")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UnsafeOutput(f"{what} path is a folder; name a file in it: {path}")
    if not path.parent.is_dir():
        raise UnsafeOutput(f"{what} folder does not exist: {path.parent}")
    if st is None:
        return path
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeOutput(f"{what} path is a device or another special file (a FIFO, a socket); refusing to replace "
                           f"it: {path}")
    if any(same_file(path, k) for k in keep):
        raise UnsafeOutput(f"{what} would overwrite the input {path}; name another file")
    if not ours(path):
        raise UnsafeOutput(f"{what} {path} exists and is not {kind}; refusing to overwrite it (name a new file or "
                           "delete it first)")
    return path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside `path` (same suffix, hidden name) to write to; renamed over `path` when the block
    ends, removed when it raises. Call check_output first: this only makes the write all-or-nothing."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:100]}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` all or nothing (see replacing)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def regular_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a file without risk (missing, a folder, a FIFO that would block, a device), or
    None. Never opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as e:
        return f"cannot be opened ({getattr(e, 'strerror', None) or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(st.st_mode):
        return "is a FIFO (named pipe), not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is a device or another special file, not a regular file"
    return None


def read_small(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ValueError naming `what` and the problem otherwise
    (nothing is opened that could block, nothing larger is read)."""
    problem = regular_file_problem(path)
    if problem:
        raise ValueError(f"{what} {_short(Path(path))} {problem}")
    blocks, size = [], 0
    try:
        with open(path, "rb") as f:  # in blocks: read(limit) would set aside `limit` bytes whatever the file holds
            while size <= limit and (block := f.read(min(1 << 20, limit + 1 - size))):
                blocks.append(block)
                size += len(block)
    except OSError as e:
        raise ValueError(f"cannot read {what} {_short(Path(path))}: {e.strerror or e}") from None
    data = b"".join(blocks)
    if len(data) > limit:
        raise ValueError(f"{what} {_short(Path(path))} is larger than {limit // 1024:,} KiB; it cannot be one")
    return data


def read_json(path: str | Path, limit: int, what: str):
    """The JSON document in a regular file of at most `limit` bytes (read_small); ValueError naming `what` when it
    is not UTF-8 JSON or nests too deeply to parse."""
    return parse_json(read_small(path, limit, what), f"{what} {_short(Path(path))}")


def parse_json(data: bytes | str, what: str):
    """json.loads with every failure a ValueError naming `what` (bad UTF-8, bad JSON, nesting too deep)."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} nests too deeply to be read") from None


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 300 else text[:150] + "..." + text[-100:]
