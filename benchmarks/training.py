"""Training throughput (samples/s) of the paper's TED Gesture and TED Expressive configs for the eager fp32 step (the
official code's speed, issue 19) and each speed option of training/train.py, on the CPU and on the GPU when there is
one: full optimiser steps (training_loss, backward, clipping, Adam) on synthetic batches of the config's size, so data
loading is not included. The variants are timed in interleaved rounds, back to back, and the median round is kept.

    python -m benchmarks.training                       # paper configs, batch 128; appends to RESULTS.md
    python -m benchmarks.training --batch 16 --steps 1 --rounds 3 --configs ted_gesture --no-record   # quick look
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.record import machine, markdown_table, record
from model_core.network import ModelConfig, PoseDiffusion
from model_core.timing import TRAIN_CLIP_SAMPLES
from training.train import (LossModule, Speed, compile_model, load_config, make_adam, native_bf16, optimizer_step,
                            resolve_speed)

CONFIGS = ("ted_gesture", "ted_expressive")
HEADER = ["config", "device", "variant", "batch", "samples/s (median)", "range", "vs eager fp32", "samples/CPU-s",
          "vs eager (CPU-s)", "warm-up s"]


def variants(device: torch.device, t: dict, keys: list[str]) -> dict[str, Speed]:
    """Eager fp32 with the for-loop Adam (the official step), each option alone, and the trainer's auto choice."""
    auto = resolve_speed({**t, "compile": "auto", "adam": "auto", "amp": True}, device)
    every = {"eager": ("eager fp32", Speed(False, False, "for-loop", 1)),
             "fused": ("fused Adam", Speed(False, False, "fused", 1)),
             "foreach": ("foreach Adam", Speed(False, False, "foreach", 1)),
             "compile": ("torch.compile", Speed(True, False, "for-loop", 1)),
             "bf16": ("bf16 autocast", Speed(False, True, "for-loop", 1)),
             "math": ("math attention", Speed(False, False, "for-loop", 1, math_attention=True)),
             "auto": (f"trainer auto ({describe(auto)})", auto)}
    if not native_bf16(device):
        keys = [k for k in keys if k != "bf16"]
    return dict(every[k] for k in ["eager", *(k for k in keys if k != "eager")])


def describe(s: Speed) -> str:
    return " + ".join(["compile"] * s.compile + ["bf16"] * s.amp + ["math attention"] * s.math_attention
                      + [f"{s.adam} Adam"])


class Run:
    """One variant's model, optimiser and synthetic batch, warmed up (compiled) at construction."""

    def __init__(self, cfg: dict, speed: Speed, device: torch.device, batch: int):
        t = cfg["train"]
        torch.manual_seed(0)
        self.model = PoseDiffusion(ModelConfig(**cfg["model"])).to(device)
        self.speed, self.device, self.batch, self.clip = speed, device, batch, t["grad_clip"]
        if speed.compile:
            compile_model(self.model)
        self.loss_fn = LossModule(self.model, t["null_cond_prob"])
        self.opt = make_adam(self.model.parameters(), t["lr"], tuple(t["betas"]), speed.adam)
        self.gen = torch.Generator(device).manual_seed(0)
        self.x0 = 0.3 * torch.randn(batch, self.model.cfg.n_poses, self.model.cfg.pose_dim, device=device)
        self.audio = 0.1 * torch.randn(batch, TRAIN_CLIP_SAMPLES, device=device)
        start = time.perf_counter()
        self.steps(2)  # the first compiles (forward and backward); the second runs what was compiled
        self.warmup_s = time.perf_counter() - start

    def steps(self, n: int) -> tuple[float, float]:
        """Samples per wall-clock second and per CPU second of this process over n steps (the loss is read once, at
        the end, as the trainer does). With --threads 1 the CPU-second rate barely moves when other programs
        share the cores (no threads spin-waiting for each other), so it compares variants on a busy machine."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            loss = optimizer_step(self.loss_fn, self.opt, self.x0, self.audio, self.gen, self.clip, self.speed.amp,
                                  self.speed.math_attention)
        float(loss)
        return self.batch * n / (time.perf_counter() - start), self.batch * n / (time.process_time() - cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--batch", type=int, default=None, help="default: the config's (128)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--variants", default="eager,fused,foreach,compile,bf16,math,auto",
                   help="of eager, fused, foreach, compile, bf16 (where native), math, auto; eager is always timed")
    p.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine(), flush=True)
    rows = []
    for dev in a.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(dev)
        for name in a.configs.split(","):
            cfg = load_config(f"training/configs/{name}.toml")
            batch = a.batch or cfg["train"]["batch_size"]
            chosen = variants(device, cfg["train"], a.variants.split(","))
            runs = {label: Run(cfg, speed, device, batch) for label, speed in chosen.items()}
            rates: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
            for r in range(a.rounds):  # rotate the order so no variant always follows the same one
                labels = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
                for label in labels:
                    rates[label].append(runs[label].steps(a.steps))
            base = [statistics.median(r[i] for r in rates["eager fp32"]) for i in (0, 1)]
            for label, rs in rates.items():
                wall, cpu = (statistics.median(r[i] for r in rs) for i in (0, 1))
                rows.append([name, dev, label, batch, f"{wall:.1f}", f"{min(r[0] for r in rs):.1f}-"
                             f"{max(r[0] for r in rs):.1f}", f"{wall / base[0]:.2f}x", f"{cpu:.1f}",
                             f"{cpu / base[1]:.2f}x", f"{runs[label].warmup_s:.0f}"])
            print(markdown_table(HEADER, rows[-len(rates):]), flush=True)
    table = markdown_table(HEADER, rows)
    notes = (f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {a.rounds} interleaved rounds of "
             f"{a.steps} steps per variant after two warm-up steps (which include compiling); synthetic batches, "
             "data loading not included. Eager fp32 with the for-loop Adam is the official code's step. samples/CPU-s: "
             "per CPU second of this process (the wall-clock columns are the result on an idle machine; CPU seconds "
             "with --threads 1 compare variants on a busy one; meaningless for cuda rows).")
    if a.no_record:
        print(table + "\n\n" + notes)
    else:
        record("Training throughput by speed option (paper configs, synthetic batches)", table, notes)


if __name__ == "__main__":
    main()
