"""Hostile inputs for the reliability tests: checkpoints that run code, a worker that hangs, a device node (stdlib
only at import); and the voiced tone the core tests speak with."""
import os
import pickle
import stat
import zipfile
from pathlib import Path


class RunsCode:
    """Unpickling this runs `touch marker`: proof of execution if the marker file appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def official_zip(path: Path, payload_bytes: bytes, stem: str = "ckpt") -> Path:
    """A zip laid out like a torch checkpoint around a given pickle."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{stem}/data.pkl", payload_bytes)
        zf.writestr(f"{stem}/version", "3\n")
    return path


def code_running_checkpoint(path: Path, marker: Path) -> Path:
    """An 'official' checkpoint whose args would run a shell command if unpickled naively."""
    return official_zip(path, pickle.dumps({"args": RunsCode(marker), "state_dict": {}}, protocol=2))


def stalling_interpreter(folder: Path, python: Path) -> Path:
    """A 'python' that starts the real worker and freezes it (SIGSTOP) right after its first progress message."""
    script = folder / "stalling-python"
    script.write_text(f"""#!/bin/sh
exec '{python}' -c 'import os, signal
from model_core import worker
send = worker.Worker.send
def send_then_freeze(self, msg):
    send(self, msg)
    if msg["type"] == "progress":
        os.kill(os.getpid(), signal.SIGSTOP)
worker.Worker.send = send_then_freeze
worker.main()'
""")
    script.chmod(0o755)
    return script


def wav_header(rate: int, data_bytes: int, channels: int = 1, width: int = 2) -> bytes:
    """A 16-bit PCM WAV header declaring `data_bytes` of samples at `rate` Hz (the data itself is not included)."""
    block = channels * width
    fmt = (b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + channels.to_bytes(2, "little")
           + rate.to_bytes(4, "little") + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
           + (8 * width).to_bytes(2, "little"))
    riff = min(4 + len(fmt) + 8 + data_bytes, 0xFFFFFFFF)
    return b"RIFF" + riff.to_bytes(4, "little") + b"WAVE" + fmt + b"data" + data_bytes.to_bytes(4, "little")


def sparse_wav(path: Path, data_bytes: int, rate: int = 16000) -> Path:
    """A WAV whose samples are a hole in the file: `data_bytes` long on paper, a few KB on disk."""
    with open(path, "wb") as f:
        f.write(wav_header(rate, data_bytes))
        f.truncate(44 + data_bytes)
    return path


def array_bomb_checkpoint(path: Path, how: str, shape: tuple = (1 << 35,)) -> Path:
    """An 'official' checkpoint of ~100 bytes whose pickle asks numpy for a huge array: by calling numpy.ndarray
    (how="ndarray") or numpy's _reconstruct (how="reconstruct") with `shape` (see pickletools.dis)."""
    shape_ops = b"(" + b"".join(b"\x8a\x08" + n.to_bytes(8, "little", signed=True) for n in shape) + b"t"
    if how == "ndarray":
        body = b"cnumpy\nndarray\n" + shape_ops + b"\x85R"  # ndarray((shape,)) via REDUCE
    else:
        body = (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + shape_ops
                + b"C\x01bt" + b"R")  # _reconstruct(ndarray, shape, b'b')
    data = b"\x80\x02}(X\x04\x00\x00\x00args" + body + b"X\n\x00\x00\x00state_dict}u."
    return official_zip(path, data)


def with_declared_size(src: Path, dst: Path, member_suffix: str, size: int) -> Path:
    """A copy of a zip whose central directory declares `size` bytes for one member (the bytes are unchanged)."""
    import struct
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        name = next(n for n in zf.namelist() if n.endswith(member_suffix)).encode()
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if bytes(raw[at + 46:at + 46 + name_len]) == name:
            struct.pack_into("<I", raw, at + 24, size)  # uncompressed size
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    dst.write_bytes(bytes(raw))
    return dst


def device_node(folder: Path) -> Path:
    """A character device of our own to aim writers at (the same device as /dev/full): a writer that replaced it
    destroys nothing shared. Where nodes cannot be made (not root), /dev/full itself, which then cannot be replaced."""
    path = folder / "full"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        return Path("/dev/full")
    return path


def voiced_tone(path: Path, seconds: float) -> Path:
    """A 180 Hz tone whose loudness swells at 3 Hz, at 16 kHz: speech-like enough to gesture to, the same every run."""
    import numpy as np
    import soundfile as sf
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)
    return path
