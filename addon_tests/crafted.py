"""Hostile inputs for the reliability tests: checkpoints that run code, a worker that hangs (stdlib only)."""
import os
import pickle
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
