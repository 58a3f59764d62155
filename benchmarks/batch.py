"""generate-batch against one command per clip: 20 spoken clips of 5-30 s with the bundled checkpoint and default
settings, total wall time of `python -m model_core generate` once per clip versus `generate-batch` once, for several
batch sizes. Usage: python -m benchmarks.batch [--clips N] [--batches 1,4,8]. Run it with nothing else on the
machine."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.record import isa, markdown_table, record

ROOT = Path(__file__).resolve().parent.parent


def make_clips(folder: Path, n: int) -> float:
    """n clips of 5-30 s cut from the example speech (repeated); returns their total seconds."""
    data, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="float32")
    long = np.tile(data, int(np.ceil(30 * sr / len(data))) + 1)
    lengths = np.random.default_rng(0).uniform(5, 30, n)
    for i, sec in enumerate(lengths):
        start = int((i * 1.7 % 5) * sr)
        sf.write(folder / f"clip{i:02d}.wav", long[start:start + int(sec * sr)], sr)
    return float(lengths.sum())


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--batches", default="1,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        seconds = make_clips(tmp / "clips", args.clips)
        env = dict(os.environ, PYTHONPATH=str(ROOT), DIFFGESTURE_CACHE_DIR=str(tmp / "cache"))
        py = [sys.executable, "-m", "model_core"]
        clips = sorted((tmp / "clips").glob("*.wav"))
        timed(py + ["generate", str(clips[0]), "-o", str(tmp / "warm.npz")], env)  # auto precision measured once
        per_clip = sum(timed(py + ["generate", str(c), "-o", str(tmp / f"{c.stem}.npz")], env) for c in clips)
        rows = [["`generate` once per clip", "-", f"{per_clip:.1f}", f"{args.clips / per_clip:.2f}", "1.00x"]]
        for b in (int(x) for x in args.batches.split(",")):
            wall = timed(py + ["generate-batch", str(tmp / "clips"), str(tmp / f"out{b}"), "--batch", str(b)], env)
            rows.append(["`generate-batch`", str(b), f"{wall:.1f}", f"{args.clips / wall:.2f}", f"{per_clip / wall:.2f}x"])
    table = markdown_table(["command", "batch", "s wall", "clips/s", "vs once per clip"], rows)
    record(f"generate-batch: {args.clips} clips of 5-30 s ({seconds:.0f} s of speech), cpu", table,
           f"Bundled checkpoint, default settings (fast, 25 steps, auto precision). CPU ISA: {isa()}.")


if __name__ == "__main__":
    main()
