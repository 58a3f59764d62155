"""Generation speed of model_core on this machine, in absolute times: per-window time of each sampler and precision
at both paper model sizes, and auto's choice. Random weights (speed does not depend on them). Usage: python -m
benchmarks.core [--device cpu|cuda] [--quick | --pairs N]. Run it with nothing else on the machine; the whole
command beside busy processes is benchmarks/busy.py.

--pairs N times only the whole command line against a yardstick measured in the same minutes: one TED Gesture
window of the paper sampler in exact float32, the official code's own computation. A shared host's speed drifts by
2x over hours; the ratio of the two does not, and relates the command to the official code's time on any host."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.record import isa, markdown_table, record
from model_core.network import ModelConfig, PoseDiffusion
from model_core.pipeline import sample_window
from model_core.cpu import physical_cores
from model_core.precision import choose_precision
from model_core.settings import GenerationSettings, preset

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"ted_gesture": ModelConfig(), "ted_expressive": ModelConfig(pose_dim=126, hidden_dim=512)}


def time_window(model: PoseDiffusion, settings: GenerationSettings, device: torch.device, repeats: int = 1) -> float:
    audio = (0.1 * torch.randn(1, 36266)).to(device)
    pre = torch.zeros(1, 34, model.cfg.pose_dim + 1, device=device)
    best = float("inf")
    for _ in range(repeats):
        gen = torch.Generator().manual_seed(0)
        gen_dev = gen if device.type == "cpu" else torch.Generator(device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample_window(model, audio, pre, settings, gen, gen_dev)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def speech_clip(folder: Path, seconds: float = 60) -> Path:
    """60 s (or `seconds`) of real speech: the example clip repeated, at its 22.05 kHz (resampled by the command, as a
    user's recording would be)."""
    data, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="float32")
    path = folder / f"speech{seconds:g}.wav"
    sf.write(path, np.tile(data, int(np.ceil(seconds * sr / len(data))))[:int(seconds * sr)], sr)
    return path


def run_cli(wav: Path, tmp: Path, precision: str = "auto", policy: dict | None = None,
            timeout: float | None = None) -> tuple[float, dict | None]:
    """Wall time of the whole command line (start-up, model load, generation, writing) for `wav`, defaults
    otherwise, with the given OpenMP settings; auto measures once per cache folder, so it is timed cached. A run
    stopped at `timeout` gives (timeout, None)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(policy or {}, PYTHONPATH=str(ROOT), DIFFGESTURE_CACHE_DIR=str(tmp / "cache"))
    cmd = [sys.executable, "-m", "model_core", "generate", str(wav), "-o", str(tmp / "out.npz"), "--precision",
           precision, "--quiet"]
    if precision == "auto" and not (tmp / "cache").exists():
        subprocess.run(cmd, capture_output=True, env=env, check=True)  # the first run measures; time the next
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float(timeout), None
    return time.perf_counter() - t0, json.loads(out.stdout)


def cli_against_yardstick(pairs: int) -> None:
    """Interleaved pairs: the whole command line (60 s of speech, defaults, auto's choice cached) and, in this
    process, one paper-sampler window of the TED Gesture model in exact float32."""
    model = PoseDiffusion(SIZES["ted_gesture"]).eval()
    paper = preset("paper", precision="exact")
    time_window(model, paper, torch.device("cpu"))  # warm: the first window also pays for first-use allocations
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        wav = speech_clip(Path(tmp))
        for i in range(pairs):
            cli, meta = run_cli(wav, Path(tmp), "auto", {})
            window = time_window(model, paper, torch.device("cpu"))
            ratios.append(cli / window)
            rows.append([i + 1, f"{cli:.2f}", f"{meta['seconds']:.2f}", meta["precision"], f"{window:.2f}",
                         f"{cli / window:.2f}"])
    rows.append(["median", "", "", "", "", f"{statistics.median(ratios):.2f}"])
    record("Whole command line against the official computation, interleaved (cpu)",
           markdown_table(["pair", "command, s wall", "of which generation, s", "auto ->",
                           "paper window exact, s", "command / window"], rows),
           f"CPU ISA: {isa()}; {physical_cores()} physical cores. `python -m model_core generate` on 60 s of speech "
           "with its defaults, against one TED Gesture window of the 500-step paper sampler in exact float32 (the "
           "computation of the official code, bit for bit on one CPU) timed right after it in the benchmark's "
           "process. The last column does not depend on how fast the shared host is that minute.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="skip the slow float32 paper runs of the large model")
    parser.add_argument("--pairs", type=int, default=0,
                        help="only time the command line against the paper window, this many interleaved pairs")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(physical_cores())  # the per-window rows: every core, measured alone
    if args.pairs:
        return cli_against_yardstick(args.pairs)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    variants = [("paper, 500 steps", preset("paper", precision=p)) for p in ("exact", "fp32")] + \
               [("fast, 25 steps (default)", GenerationSettings(steps=25, precision=p))
                for p in ("exact", "fp32", "bf16")]
    rows = []
    for name, cfg in SIZES.items():
        model = PoseDiffusion(cfg).eval().to(device)
        for label, settings in variants:
            if args.quick and name == "ted_expressive" and settings.sampler == "paper":
                continue
            sec = time_window(model, settings, device, repeats=1 if settings.sampler == "paper" else 3)
            rows.append([name, label, settings.precision, f"{sec:.3f}"])
        auto, how = choose_precision(model, "auto", "fast", 1, 1.15, device)
        rows.append([name, "fast, 25 steps (default)", f"auto -> {auto}", how])
    table = markdown_table(["model", "sampler", "precision", "s / window"], rows)
    record(f"model_core generation speed ({device.type}, {threads} threads)", table,
           f"CPU ISA: {isa()}; {physical_cores()} physical cores. Absolute times on this machine only, measured "
           "alone. Whole commands beside busy processes: benchmarks/busy.py.")


if __name__ == "__main__":
    main()
