"""Generation speed of model_core: per-window time of each sampler at both paper model sizes, and end-to-end
time for 60 s of speech. Random weights (speed does not depend on them). Usage: python -m benchmarks.core
[--threads N] [--device cpu|cuda] [--quick]."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.record import markdown_table, record
from model_core.network import ModelConfig, PoseDiffusion
from model_core.pipeline import generate, sample_window
from model_core.settings import GenerationSettings, preset

# The official code on this project's 2-core CPU (2 threads, random weights), from the issue.
OFFICIAL_PER_WINDOW = {"ted_gesture": 6.9, "ted_expressive": 18.0}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="skip the slow fp32 paper runs of the large model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [("paper, 500 steps", preset("paper", precision="exact")),
                ("paper, 500 steps", preset("paper", precision="fp32")),
                ("paper, 500 steps", preset("paper", precision="bf16")),
                ("fast, 50 steps", GenerationSettings(steps=50, precision="fp32")),
                ("fast, 50 steps", GenerationSettings(steps=50, precision="bf16")),
                ("fast, 25 steps", GenerationSettings(steps=25, precision="bf16"))]
    rows = []
    for name, cfg in SIZES.items():
        model = PoseDiffusion(cfg).eval().to(device)
        for label, settings in variants:
            if args.quick and name == "ted_expressive" and settings.sampler == "paper" and settings.precision != "bf16":
                continue
            sec = time_window(model, settings, device, repeats=1 if settings.sampler == "paper" else 3)
            speedup = OFFICIAL_PER_WINDOW[name] / sec if device.type == "cpu" and args.threads == 2 else None
            rows.append([name, label, settings.precision, f"{sec:.3f}", f"{speedup:.1f}x" if speedup else "-"])
    table = markdown_table(["model", "sampler", "precision", "s / window", "vs official (CPU, 2 threads)"], rows)
    audio = (0.1 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
    e2e = []
    model = PoseDiffusion(SIZES["ted_gesture"]).eval().to(device)
    for steps, precision in ((50, "bf16"), (25, "bf16"), (50, "fp32")):
        t0 = time.perf_counter()
        generate(model, audio, GenerationSettings(steps=steps, precision=precision))
        e2e.append(["ted_gesture", f"fast, {steps} steps", precision, f"{time.perf_counter() - t0:.2f}"])
    table += "\n\n" + markdown_table(["model", "sampler", "precision", "s for 60 s of speech (30 windows)"], e2e)
    record(f"model_core generation speed ({device.type}, {args.threads} threads)", table,
           "Official reference: 6.9 s per TED Gesture window, 18 s per TED Expressive window (2-core CPU, 2 threads).")


if __name__ == "__main__":
    main()
