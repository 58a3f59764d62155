"""Seeded mutations of real checkpoints and a real WAV, loaded in this process under a memory limit.

`python -m addon_tests.fuzz mutate OUT.json SEED COUNT WAV CHECKPOINT...` writes one outcome per mutation: "ok",
the project's own error type, or (a defect) any other exception with its traceback, or "memory" when an
allocation hit the limit. The limit is set after the imports and a warm-up load: the address space may grow by at
most LIMIT_BYTES from there. `load OUT.json WAV CHECKPOINT NAME=PATH...` loads given files the same way (the
bounded-input tests).
"""
import io
import json
import random
import resource
import sys
import traceback
import zipfile
from pathlib import Path

LIMIT_BYTES = 1 << 30


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_memory(extra: int = LIMIT_BYTES) -> None:
    """Cap this process's address space at what it uses now plus `extra` bytes."""
    cap = _vm_bytes() + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def flip(data: bytes, rng: random.Random, start: int = 0, end: int | None = None) -> bytes:
    """One to eight random edits within [start, end): flipped bits, set bytes, a zeroed run, a cut or an insertion."""
    b = bytearray(data)
    end = len(b) if end is None else min(end, len(b))
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, end)
        kind = rng.random()
        if kind < 0.45:
            b[i] ^= 1 << rng.randrange(8)
        elif kind < 0.7:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif kind < 0.8:
            k = rng.randint(2, 64)
            b[i:i + k] = bytes(len(b[i:i + k]))
        elif kind < 0.9:
            del b[i:i + rng.randint(1, 16)]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        end = min(end, len(b))
        if end <= start:
            break
    return bytes(b)


def repickled(archive: bytes, rng: random.Random) -> bytes:
    """The checkpoint with only its pickle (data.pkl) mutated and the zip rebuilt with valid CRCs, so the damage
    reaches the unpickler instead of the zip layer."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            data = src.read(info)
            zf.writestr(info.filename, flip(data, rng) if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def mutations(seed: int, count: int, checkpoints: list[Path], wav: Path):
    """(name, suffix, bytes): raw edits and pickle edits of each checkpoint, header and body edits of the WAV."""
    rng = random.Random(seed)
    sources = [(p.name, p.read_bytes()) for p in checkpoints]
    audio = wav.read_bytes()
    for n in range(count):
        r = n % 4
        if r == 3:
            hdr = rng.random() < 0.7  # mostly the header: that is where sizes and rates live
            yield f"wav-{n}", ".wav", flip(audio, rng, 0, 64 if hdr else None)
            continue
        name, data = sources[n % len(sources)]
        if r == 2:
            yield f"{name}-pickle-{n}", ".pt", repickled(data, rng)
        else:
            yield f"{name}-raw-{n}", ".pt", flip(data, rng)


def load_all(out: Path, cases, warm_checkpoint: str, warm_wav: str) -> None:
    """Load each (name, path) case under the memory limit; write {name: outcome} to `out` as JSON."""
    import torch
    from model_core.audio import AudioError, load_audio
    from model_core.checkpoint import CheckpointError, load_checkpoint
    torch.set_num_threads(1)
    load_checkpoint(warm_checkpoint)  # warm-up: lazy imports and thread pools are in place before the limit
    load_audio(warm_wav)
    limit_memory()
    outcomes = {}
    for name, path in cases:
        try:
            (load_audio if Path(path).suffix == ".wav" else load_checkpoint)(path)
            outcomes[name] = "ok"
        except (AudioError, CheckpointError) as e:
            outcomes[name] = f"{type(e).__name__}: {e}"
        except MemoryError:
            outcomes[name] = "memory: MemoryError"
        except Exception:
            outcomes[name] = "defect: " + traceback.format_exc()
        if "can't allocate memory" in outcomes[name]:
            outcomes[name] = "memory: " + outcomes[name]
    out.write_text(json.dumps(outcomes, indent=1))


def _written(folder: Path, seed: int, count: int, checkpoints: list[str], wav: str):
    for name, suffix, data in mutations(seed, count, [Path(c) for c in checkpoints], Path(wav)):
        path = folder / f"mutant{suffix}"
        path.write_bytes(data)
        yield name, path


if __name__ == "__main__":
    # mutate OUT SEED COUNT WAV CHECKPOINT...  |  load OUT WAV CHECKPOINT NAME=PATH...
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "mutate":
        seed, count, wav, ckpts = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
        load_all(out, _written(out.parent, seed, count, ckpts, wav), ckpts[0], wav)
    else:
        wav, ckpt = sys.argv[3], sys.argv[4]
        load_all(out, [arg.split("=", 1) for arg in sys.argv[5:]], ckpt, wav)
