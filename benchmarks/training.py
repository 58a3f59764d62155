"""Training throughput (samples/s) of the paper's TED Gesture and TED Expressive configs, on CPU and on the GPU
when there is one: full optimiser steps (training_loss, backward, clipping, Adam) on synthetic batches of the
config's size, so data loading is not included. Usage: python -m benchmarks.training [--steps N] [--batch B]
[--threads N] [--devices cpu,cuda]."""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.record import markdown_table, record
from model_core.network import ModelConfig, PoseDiffusion
from training.data import WINDOW_SAMPLES
from training.train import LossModule, load_config, optimizer_step

CONFIGS = ("ted_gesture", "ted_expressive")


def throughput(name: str, device: str, steps: int, batch: int | None) -> tuple[int, float]:
    """(batch, samples per second) over `steps` timed steps after one warm-up step."""
    cfg = load_config(f"training/configs/{name}.toml")
    t = cfg["train"]
    b = batch or t["batch_size"]
    model = PoseDiffusion(ModelConfig(**cfg["model"])).to(device)
    loss_fn = LossModule(model, t["null_cond_prob"])
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"], betas=tuple(t["betas"]))
    gen = torch.Generator(device).manual_seed(0)
    x0 = 0.3 * torch.randn(b, model.cfg.n_poses, model.cfg.pose_dim, device=device)
    audio = 0.1 * torch.randn(b, WINDOW_SAMPLES, device=device)
    optimizer_step(loss_fn, opt, x0, audio, gen, t["grad_clip"], t["amp"])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer_step(loss_fn, opt, x0, audio, gen, t["grad_clip"], t["amp"])
    if device == "cuda":
        torch.cuda.synchronize()
    return b, b * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="default: the config's (128)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--devices", default="cpu,cuda")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for device in a.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for name in CONFIGS:
            b, rate = throughput(name, device, a.steps, a.batch)
            amp = "bf16 autocast" if device == "cuda" else "fp32"
            rows.append([name, device, amp, b, f"{rate:.1f}", f"{b / rate:.3f}"])
    record("Training throughput (paper configs, synthetic batches)",
           markdown_table(["config", "device", "precision", "batch", "samples/s", "s/step"], rows),
           f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {a.steps} timed steps after one "
           "warm-up; data loading not included.")


if __name__ == "__main__":
    main()
