"""Read the official TED LMDB databases, whose values were written by `pyarrow.serialize` (pyarrow 0.14).

`pyarrow.deserialize` was removed from pyarrow and the newest release that still has it (11.0.0) needs Python
<= 3.11 and numpy < 2, so it runs in a pinned environment of its own (requirements/ted_lmdb.txt, made by
`python3 build.py convert-ted`). There this file runs as a script and streams each record to stdout in a small
pickle-free format; training/data.py reads that stream in the torch environment with `read_records`.

Stream: per record an 8-byte little-endian length and a JSON document {"key", "value"} in which every numpy
array is replaced by {"__array__": i, "dtype", "shape"}, followed by the arrays' raw bytes (8-byte length each);
a zero length ends the stream. This module imports only the standard library and numpy at the top.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

_LEN = struct.Struct("<Q")


def _encode(value, arrays: list[np.ndarray]):
    """JSON-able copy of a decoded record, arrays moved to `arrays`."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        arrays.append(np.ascontiguousarray(value))
        return {"__array__": len(arrays) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.ndarray):
        return [_encode(v, arrays) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def write_records(records: Iterator[tuple[bytes, object]], out: BinaryIO) -> None:
    """Stream (key, decoded value) records in the format above."""
    for key, value in records:
        arrays: list[np.ndarray] = []
        doc = json.dumps({"key": key.decode("utf-8", errors="replace"), "value": _encode(value, arrays)}).encode()
        out.write(_LEN.pack(len(doc)) + doc)
        for a in arrays:
            out.write(_LEN.pack(a.nbytes))
            out.write(a.tobytes())
    out.write(_LEN.pack(0))
    out.flush()


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = f.read(n)
    if len(buf) != n:
        raise EOFError(f"the record stream ended early ({len(buf)} of {n} bytes)")
    return buf


def _decode(value, arrays: list[np.ndarray]):
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def read_records(f: BinaryIO) -> Iterator[tuple[str, object]]:
    """(key, value) records from a stream written by write_records, arrays rebuilt without pickle."""
    while True:
        (n,) = _LEN.unpack(_read_exact(f, _LEN.size))
        if n == 0:
            return
        doc = json.loads(_read_exact(f, n))
        specs: list[dict] = []
        _collect(doc["value"], specs)
        arrays: list[np.ndarray] = [np.empty(0)] * len(specs)
        for spec in sorted(specs, key=lambda s: s["__array__"]):
            (size,) = _LEN.unpack(_read_exact(f, _LEN.size))
            arrays[spec["__array__"]] = np.frombuffer(_read_exact(f, size), dtype=np.dtype(spec["dtype"])
                                                      ).reshape(spec["shape"]).copy()
        yield doc["key"], _decode(doc["value"], arrays)


def _collect(value, specs: list[dict]) -> None:
    if isinstance(value, dict):
        if "__array__" in value:
            specs.append(value)
        else:
            for v in value.values():
                _collect(v, specs)
    elif isinstance(value, list):
        for v in value:
            _collect(v, specs)


def legacy_records(path: str | Path, python: str | Path) -> Iterator[tuple[str, object]]:
    """Records of an official LMDB, decoded by `python` (an interpreter with pyarrow 11 and lmdb) running this file."""
    proc = subprocess.Popen([str(python), str(Path(__file__).resolve()), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        yield from read_records(proc.stdout)
    except EOFError:
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"reading {path} with {python} failed: {err[-1] if err else 'no message'}") from None
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def main(argv: list[str] | None = None) -> None:
    """python legacy_lmdb.py LMDB_PATH: stream its records (pyarrow.deserialize) to stdout."""
    import warnings
    import lmdb
    import pyarrow
    warnings.simplefilter("ignore", FutureWarning)  # deserialize is deprecated, and that is why we are here
    (path,) = argv if argv is not None else sys.argv[1:]
    if not Path(path).exists():
        sys.exit(f"no LMDB at {path}")
    env = lmdb.open(path, readonly=True, lock=False, subdir=Path(path).is_dir())
    try:
        with env.begin() as txn:
            write_records(((bytes(k), pyarrow.deserialize(bytes(v))) for k, v in txn.cursor()), sys.stdout.buffer)
    finally:
        env.close()


if __name__ == "__main__":
    main()
