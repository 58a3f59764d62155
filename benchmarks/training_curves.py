"""Same learning with every speed option (issue 19): fixed-seed training runs of the real trainer on procedural data,
one per option, and their loss curves (block means of steps.csv) next to eager fp32's. The noise reference is eager
fp32 with another seed; an option learns the same when its curve stays as close to eager's as that one does.

    python -m training.procedural runs/data/curves --clips 16 --duration 12 --seed 0
    python -m benchmarks.training_curves --data runs/data/curves --steps 300 --small   # 2-core CPU: tiny model
    python -m benchmarks.training_curves --data runs/data/curves --steps 300           # paper model (demo.toml)
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.record import machine, markdown_table
from training.train import Trainer, load_config, native_bf16

# label -> ([train] overrides, seed); the first is the reference, the second the noise reference
VARIANTS = {"eager fp32": ({"compile": False, "amp": False, "adam": "for-loop"}, 0),
            "eager fp32 seed 1 (noise)": ({"compile": False, "amp": False, "adam": "for-loop"}, 1),
            "fused Adam": ({"compile": False, "amp": False, "adam": "fused"}, 0),
            "bf16 autocast": ({"compile": False, "amp": True, "adam": "for-loop"}, 0),
            "torch.compile": ({"compile": True, "amp": False, "adam": "for-loop"}, 0),
            "trainer auto": ({"compile": "auto", "amp": True, "adam": "auto", "log_every": 0}, 0)}
SMALL_MODEL = {"hidden_dim": 64, "block_depth": 2, "n_heads": 4}


def curve(cfg: dict, out: Path, steps: int, block: int) -> tuple[list[float], dict]:
    """Block means of the per-step loss of one run, and the speed options it recorded."""
    trainer = Trainer(cfg, out)
    trainer.run(max_steps=steps)
    with open(out / "steps.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    return [statistics.fmean(losses[i:i + block]) for i in range(0, len(losses), block)], trainer.speed_record()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a procedural dataset (python -m training.procedural)")
    p.add_argument("--config", default="training/configs/demo.toml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--block", type=int, default=50, help="steps per mean in the table")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--small", action="store_true", help=f"a small model ({SMALL_MODEL}) for a CPU")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels")
    a = p.parse_args()
    base = load_config(a.config)
    base["data"].update(train=a.data, motion_filters=False, min_words=0)
    base["train"].update(batch_size=a.batch, epochs=10 ** 6, export_every_epochs=0, save_every_minutes=0,
                         export_path="", log_every=0)
    if a.small:
        base["model"].update(SMALL_MODEL)
    print(machine(), f"torch {torch.__version__}; bf16 native on the CPU: {native_bf16(torch.device('cpu'))}",
          flush=True)
    curves, speeds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in a.variants.split(","):
            overrides, seed = VARIANTS[label]
            cfg = copy.deepcopy(base)
            cfg["train"].update(overrides, seed=seed)
            curves[label], speeds[label] = curve(cfg, Path(tmp) / str(len(curves)), a.steps, a.block)
            print(label, speeds[label], " ".join(f"{v:.4f}" for v in curves[label]), flush=True)
    ref = curves["eager fp32"]
    rows = []
    for label, c in curves.items():
        dev = max(abs(x - y) / y for x, y in zip(c, ref))
        rows.append([label, *(f"{v:.4f}" for v in c), f"{100 * dev:.1f} %"])
    header = ["variant", *(f"steps {i + 1}-{min(i + a.block, a.steps)}" for i in range(0, a.steps, a.block)),
              "max deviation from eager fp32"]
    print()
    print(markdown_table(header, rows))
    print(f"\nMean training loss per block of {a.block} steps, batch {a.batch}, seed 0 (noise row: seed 1); "
          f"model {base['model']}; data {a.data}. Options in effect: "
          + "; ".join(f"{k}: {v}" for k, v in speeds.items()))


if __name__ == "__main__":
    main()
