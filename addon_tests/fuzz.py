"""Seeded mutations of real checkpoints, a real WAV and the small files users hand the project, read in this
process under a memory limit.

`python -m addon_tests.fuzz mutate OUT.json SEED COUNT WAV CHECKPOINT...` writes one outcome per mutation: "ok",
the project's own error type, or (a defect) any other exception with its traceback, or "memory" when an
allocation hit the limit. The limit is set after the imports and a warm-up load: the address space may grow by at
most LIMIT_BYTES from there. `load OUT.json WAV CHECKPOINT NAME=PATH...` loads given files the same way (the
bounded-input tests). `inputs OUT.json SEED COUNT WATCHED CHECKPOINT WAV` mutates take records (result files),
generate-batch manifests and the precision cache (issue 29): each is read, and what it names as an output is
checked against the WATCHED folder, whose files must keep their bytes. mutate_text and mutate_json also serve the
bone-map mutations that run inside Blender.
"""
import io
import json
import random
import re
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


HOSTILE_VALUES = [None, -1, -24, 0, 2 ** 62, 2 ** 64, 1e308, -1e308, "", "\0", "../../escape", "x" * 200_000,
                  True, [], {}, [[1, 2]], {"a": {"b": 1}}, "/dev/zero", "speech.wav", "notes.txt", "caf\udce9"]


def mutate_json(doc, rng: random.Random):
    """The document with one value (at any depth), key or the whole of it replaced by a hostile value."""
    if not isinstance(doc, (dict, list)) or not doc or rng.random() < 0.1:
        return rng.choice(HOSTILE_VALUES)
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = rng.choice(keys)
    doc = dict(doc) if isinstance(doc, dict) else list(doc)
    if isinstance(doc, dict) and rng.random() < 0.15:
        doc[rng.choice(["colour", "", "\0", "x" * 1000])] = doc.pop(key)
    elif rng.random() < 0.4:
        doc[key] = rng.choice(HOSTILE_VALUES)
    else:
        doc[key] = mutate_json(doc[key], rng)
    return doc


def mutate_text(text: str, rng: random.Random) -> bytes:
    """JSON or CSV text mutated: a hostile value in its JSON, deep nesting, bytes that are not UTF-8, or raw edits."""
    kind = rng.random()
    if kind < 0.45:
        try:
            return json.dumps(mutate_json(json.loads(text), rng)).encode("utf-8", "surrogateescape")
        except ValueError:  # JSON lines or CSV: one line of it
            lines = text.splitlines() or [""]
            i = rng.randrange(len(lines))
            try:
                lines[i] = json.dumps(mutate_json(json.loads(lines[i]), rng))
            except ValueError:
                lines[i] = lines[i] + "," + str(rng.choice(HOSTILE_VALUES))
            return "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    if kind < 0.55:
        return text.encode()[:rng.randrange(len(text) + 1)] + b"[" * 100_000
    if kind < 0.6:
        return text.encode().replace(b"a", b"\xe9", 3)
    return flip(text.encode(), rng)


def input_mutations(seed: int, count: int, sources: dict[str, tuple[str, bytes]]):
    """(name, kind, suffix, bytes): take records (raw edits of the .npz, or a hostile value in its metadata),
    manifests and precision caches (mutate_text), in turn."""
    rng = random.Random(seed)
    kinds = list(sources)
    for n in range(count):
        kind = kinds[n % len(kinds)]
        suffix, data = sources[kind]
        if kind == "take" and rng.random() < 0.6:
            data = _take_with_meta(data, rng)
        elif kind == "take":
            data = flip(data, rng)
        else:
            data = mutate_text(data.decode(), rng)
        yield f"{kind}-{n}", kind, suffix, data


def _take_with_meta(take: bytes, rng: random.Random) -> bytes:
    """The result file with its metadata mutated (the arrays kept), its poses' header declaring another shape now
    and then, the zip rebuilt with valid CRCs."""
    src = zipfile.ZipFile(io.BytesIO(take))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "meta.npy":
                import numpy as np
                meta = mutate_json(json.loads(str(np.load(io.BytesIO(data)))), rng)
                buf = io.BytesIO()
                np.save(buf, np.array(json.dumps(meta)))
                data = buf.getvalue()
            elif info.filename == "poses.npy" and rng.random() < 0.3:
                shape = rng.choice(["(1, 10000000, 27)", "(100000, 100000, 27)", "(-1, 30, 27)", "(1, 30)"])
                data = re.sub(rb"'shape': \([^)]*\)", b"'shape': " + shape.encode(), data, count=1)
            zf.writestr(info.filename, data)
    return out.getvalue()


def read_inputs(out: Path, cases, watched: Path, checkpoint: str) -> None:
    """Read each (name, kind, path) case as the project does, under the memory limit, and check what it would
    write in the `watched` folder (refused or new, never written); write {name: outcome} to `out` as JSON."""
    import os
    import torch
    from model_core import precision
    from model_core.batch import read_manifest
    from model_core.checkpoint import load_checkpoint
    from model_core.pipeline import output_paths
    from model_core.reroll import read_take
    torch.set_num_threads(1)
    ckpt = load_checkpoint(checkpoint)
    limit_memory()
    outcomes = {}
    for name, kind, path in cases:
        try:
            if kind == "take":
                take = read_take(path)
                output_paths(watched / "notes.txt", len(take["poses"]), ckpt.skeleton, (path,))
            elif kind.startswith("manifest"):
                for clip in read_manifest(path, watched):
                    if not clip.problem:
                        output_paths(clip.output, 1, ckpt.skeleton, (clip.audio,))
            else:
                os.environ["DIFFGESTURE_CACHE_DIR"] = str(Path(path).parent)
                precision._memo.clear()
                precision.choose_precision(ckpt.model, "auto", "fast", 1, 1.15, torch.device("cpu"))
            outcomes[name] = "ok"
        except ValueError as e:  # the project's messages: ManifestError, UnsafeOutput, a damaged take ...
            outcomes[name] = f"{type(e).__name__}: {str(e)[:300]}"
        except MemoryError:
            outcomes[name] = "memory: MemoryError"
        except Exception:
            outcomes[name] = "defect: " + traceback.format_exc()
    out.write_text(json.dumps(outcomes, indent=1))


def _written_inputs(folder: Path, seed: int, count: int, sources: dict[str, tuple[str, bytes]]):
    for name, kind, suffix, data in input_mutations(seed, count, sources):
        path = folder / kind / ("precision.json" if kind == "precision" else f"mutant{suffix}")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        yield name, kind, path


def input_sources(wav: Path, scratch: Path) -> dict[str, tuple[str, bytes]]:
    """The valid files the input mutations start from: a result file, a JSONL and a CSV manifest, a precision
    cache of this machine's key."""
    import numpy as np
    from model_core.protocol import write_result
    write_result(scratch / "take.npz", np.zeros((1, 30, 27), np.float32), np.zeros((1, 30, 9, 3), np.float32),
                 {"skeleton": "ted_gesture", "fps": 15, "duration": 2.0, "seed": 0, "settings": {"seed": 0},
                  "audio": str(wav), "checkpoint_sha256": ""})
    jsonl = "\n".join(json.dumps({"audio": str(wav), "seed": i, "output": f"o{i}.npz"}) for i in range(3)) + "\n"
    csv = f"audio,seed,output\n{wav},1,a.npz\n{wav},2,\n"
    cache = json.dumps({"key": {"choice": "fp32", "ms_per_step": {"exact": 1.0, "fp32": 0.9},
                                "runs": [{"ms_per_step": {"exact": 1.0, "fp32": 0.9}, "load_per_core": 0.1}]}})
    return {"take": (".npz", (scratch / "take.npz").read_bytes()), "manifest": (".jsonl", jsonl.encode()),
            "manifest-csv": (".csv", csv.encode()), "precision": (".json", cache.encode())}


if __name__ == "__main__":
    # mutate OUT SEED COUNT WAV CHECKPOINT...  |  load OUT WAV CHECKPOINT NAME=PATH...
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "inputs":  # inputs OUT SEED COUNT WATCHED CHECKPOINT WAV
        seed, count, watched, ckpt, wav = int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]), *sys.argv[6:8]
        srcs = input_sources(Path(wav), out.parent)
        read_inputs(out, _written_inputs(out.parent, seed, count, srcs), watched, ckpt)
    elif mode == "mutate":
        seed, count, wav, ckpts = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
        load_all(out, _written(out.parent, seed, count, ckpts, wav), ckpts[0], wav)
    else:
        wav, ckpt = sys.argv[3], sys.argv[4]
        load_all(out, [arg.split("=", 1) for arg in sys.argv[5:]], ckpt, wav)
