"""The DiffGesture trainer: paper defaults (FACTS §6), CUDA + AMP or CPU, DDP under torchrun, exact resume.

    python -m training.train --config training/configs/demo.toml [--resume] [--max-steps N] [--out DIR]
    torchrun --nproc_per_node=N -m training.train --config ...   (gloo on CPU, nccl on GPU)

The objective is model_core's PoseDiffusion.training_loss. A run folder holds resume.pt (model, optimiser,
random-generator states and position, so a resumed run continues bit for bit), steps.csv / epochs.csv logs, and
native checkpoints (model_core.checkpoint.save_native) with provenance: config, data hash, epoch, step, metrics.

Speed options ([train] compile, amp, adam, log_every, threads; see resolve_speed) change how fast a step runs, not
what it computes beyond float rounding (so a run continues bit for bit only on the same threads: set `threads`);
the choice made is recorded in resume.pt and in every checkpoint's provenance.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import os
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, DistributedSampler

from model_core.checkpoint import CheckpointError, load_checkpoint, save_native
from model_core.cpu import adapt_threads
from model_core.precision import cpu_native_bf16
from model_core.network import ModelConfig, PoseDiffusion
from model_core.progress import ProgressPrinter
from model_core.skeleton import get_skeleton

from .data import WindowDataset

TRAIN_DEFAULTS = {"epochs": 500, "batch_size": 128, "lr": 5e-4, "betas": [0.5, 0.999], "grad_clip": 10.0,
                  "null_cond_prob": 0.1, "seed": 0, "amp": True, "out": "runs/train", "export_every_epochs": 50,
                  "save_every_minutes": 10.0, "export_path": "", "export_dtype": "float32", "max_steps": 0,
                  "max_minutes": 0.0, "compile": "auto", "adam": "auto", "log_every": 0, "init_from": "",
                  "init_sha256": "", "compact_state": "", "compact_every_steps": 0,
                  "threads": "auto", "small_t_share": 0.0, "small_t_max": 0, "ema_decay": 0.0}
DATA_DEFAULTS = {"motion_filters": True, "min_words": 2, "workers": "auto"}
ADAM_KINDS = ("fused", "foreach", "for-loop")


def load_config(path: str | Path) -> dict:
    """Read a TOML config and fill in the paper's defaults."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    unknown = set(raw.get("train", {})) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown [train] keys {sorted(unknown)}")
    return {"model": dict(raw.get("model", {})), "data": {**DATA_DEFAULTS, **raw["data"]},
            "train": {**TRAIN_DEFAULTS, **raw.get("train", {})}}


BN_CALIBRATION_WINDOWS = 2048  # training windows whose audio measures the averaged weights' BatchNorm statistics


def recalibrate_batchnorm(model: PoseDiffusion, audio_batches: Iterable[torch.Tensor]) -> None:
    """Measure the BatchNorm running statistics (all in the audio encoder) afresh for the model's current weights:
    their plain mean over the batches, the rest of the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, training = [m.momentum for m in norms], model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    with torch.no_grad():
        for audio in audio_batches:
            model.audio_encoder(audio)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(training)


def draw_steps(batch: int, num_steps: int, small_share: float, small_max: int, generator: torch.Generator
               ) -> torch.Tensor:
    """Diffusion steps for a batch: uniform on 1..T (the paper's), but a share `small_share` of the rows uniform
    on 1..small_max, the last steps of sampling, where the final rounding of the motion (rest, smoothness) is made."""
    device = generator.device
    t = torch.randint(1, num_steps + 1, (batch,), device=device, generator=generator)
    small = torch.randint(1, small_max + 1, (batch,), device=device, generator=generator)
    return torch.where(torch.rand(batch, device=device, generator=generator) < small_share, small, t)


class LossModule(nn.Module):
    """Wraps training_loss as forward() so DistributedDataParallel can synchronise its gradients.

    small_share > 0 draws the diffusion steps by draw_steps; 0 leaves the draw to training_loss (the paper's)."""

    def __init__(self, model: PoseDiffusion, null_cond_prob: float, small_share: float = 0.0, small_max: int = 0):
        super().__init__()
        self.model = model
        self.null_cond_prob = null_cond_prob
        self.small_share, self.small_max = small_share, small_max

    def forward(self, x0: torch.Tensor, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = None
        if self.small_share > 0:
            t = draw_steps(len(x0), self.model.schedule.num_steps, self.small_share, self.small_max, generator)
        return self.model.training_loss(x0, audio, self.null_cond_prob, t=t, generator=generator)


def optimizer_step(loss_fn: nn.Module, opt: torch.optim.Optimizer, x0: torch.Tensor, audio: torch.Tensor,
                   gen: torch.Generator, grad_clip: float, amp: bool, math_attention: bool = False) -> torch.Tensor:
    """One paper training step: loss (bf16 autocast on x0's device when amp), backward, norm clipping, Adam.

    math_attention: scaled_dot_product_attention by its math backend (the same formula as the fused ones).
    Returns the loss as a detached tensor, so that the caller decides when to wait for it (a host sync)."""
    loss_fn.train()
    backend = sdpa_kernel([SDPBackend.MATH]) if math_attention else contextlib.nullcontext()
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp), backend:
        loss = loss_fn(x0, audio, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(loss_fn.parameters(), grad_clip)
    opt.step()
    return loss.detach()


@dataclass(frozen=True)
class Speed:
    """The speed options of a run, resolved for its device; recorded in the checkpoints' provenance."""

    compile: bool  # torch.compile the audio encoder and the denoiser
    amp: bool  # bf16 autocast
    adam: str  # one of ADAM_KINDS
    log_every: int  # steps between reads of the loss (each read waits for the device)
    math_attention: bool = False  # attention by SDPA's math backend (CPU bf16: faster than its flash kernel)
    threads: int = 0  # CPU threads, fixed; 0: as many as the machine's load leaves (model_core/cpu.py)

    def to_dict(self) -> dict:
        return asdict(self)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 matrix products in hardware: CUDA from Ampere on, CPUs with AVX512-BF16
    or AMX. Elsewhere bf16 is emulated (on one Intel CPU here, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_native_bf16()


def resolve_speed(t: dict, device: torch.device) -> Speed:
    """Turn the config's speed keys ("auto" or explicit) into the choices for this device.

    auto keeps what measurably pays (benchmarks/training.py). On a CPU: bf16 autocast where native_bf16 with
    attention by SDPA's math backend (its bf16 flash kernel is slower for 34 frames): 1.8x on an AVX512-BF16 EPYC,
    no compile (+4 %, within noise, for minutes of compiling), the for-loop Adam (fused: no gain), the loss read
    every step (free there). On a GPU, where a step of this small model is bound by kernel launches and host
    syncs: compile, bf16 where native, fused Adam, torch's attention backend, the loss read every 50 steps. threads:
    "auto" follows the machine's load on a CPU; a number fixes them."""
    compile_ = t["compile"]
    if compile_ not in ("auto", True, False):
        raise ValueError(f"[train] compile must be \"auto\", true or false, not {compile_!r}")
    cpu = device.type == "cpu"
    adam = t["adam"]
    if adam == "auto":
        adam = "for-loop" if cpu else "fused"
        try:  # torch refuses fused=True at construction for devices without fused kernels
            torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=adam == "fused")
        except RuntimeError:
            adam = "foreach"
    if adam not in ADAM_KINDS:
        raise ValueError(f"[train] adam must be \"auto\" or one of {ADAM_KINDS}, not {adam!r}")
    log_every = int(t["log_every"]) or (1 if cpu else 50)
    if log_every < 0:
        raise ValueError(f"[train] log_every must be >= 0 (0: auto), not {log_every}")
    amp = bool(t["amp"]) and native_bf16(device)
    threads = t["threads"]
    if threads != "auto" and not (isinstance(threads, int) and not isinstance(threads, bool) and threads > 0):
        raise ValueError(f"[train] threads must be \"auto\" or a positive whole number, not {threads!r}")
    return Speed(compile=not cpu if compile_ == "auto" else compile_, amp=amp, adam=adam, log_every=log_every,
                 math_attention=cpu and amp, threads=0 if threads == "auto" else threads)


def make_adam(params, lr: float, betas: tuple[float, float], kind: str) -> torch.optim.Adam:
    """Adam with the chosen implementation; all three compute the same update up to float rounding."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=kind == "fused" or None,
                            foreach=kind == "foreach" if kind != "fused" else None)


def compile_model(model: PoseDiffusion, on: bool = True) -> None:
    """torch.compile the audio encoder's and the denoiser's forward in place (on=False undoes it).

    The compiled forward is an instance attribute, so parameter names and state dicts stay the official ones
    (nn.Module.compile would keep them too, but torch 2.13 skips tracing a module's _call_impl)."""
    for module in (model.audio_encoder, model.diffusion_net.net):
        if on:
            module.forward = torch.compile(module.forward)
        else:
            module.__dict__.pop("forward", None)


def epoch_batches(sampler: DistributedSampler, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's batches of one epoch (shuffled by seed + epoch, full batches only, as drop_last)."""
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


def _rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "loss_gen": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["loss_gen"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


MOMENTS = ("exp_avg", "exp_avg_sq")


def round_moments(opt: torch.optim.Optimizer) -> None:
    """Round Adam's moments to bfloat16 precision in place (bf16 keeps float32's range: no moment underflows)."""
    with torch.no_grad():
        for state in opt.state.values():
            for k in MOMENTS:
                if k in state:
                    state[k].copy_(state[k].to(torch.bfloat16))


def compact_optimizer_state(state_dict: dict) -> dict:
    """An Adam state dict with its moments stored as bfloat16 (load_state_dict casts them back exactly)."""
    return {**state_dict, "state": {i: {k: v.to(torch.bfloat16) if k in MOMENTS else v for k, v in st.items()}
                                    for i, st in state_dict["state"].items()}}


class EpochBatches:
    """Batch sampler of a run's one DataLoader: the batches left in the current epoch, set before each pass, so that
    the loading processes persist across epochs."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader_workers(setting: int | str, device: torch.device, world: int) -> int:
    """Data-loading processes per training process. auto: one on the CPU (a step there takes far longer than
    loading its batch) and, on a GPU, up to 8 per process, leaving each process a core of its own."""
    if setting != "auto":
        if not isinstance(setting, int) or setting < 0:
            raise ValueError(f"[data] workers must be \"auto\" or a count >= 0, not {setting!r}")
        return setting
    if device.type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // world - 1))


class Trainer:
    """One training run (one process of it under torchrun)."""

    def __init__(self, cfg: dict, out: Path, resume: bool = False):
        self.cfg, self.out, self.t = cfg, out, cfg["train"]
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(self.t["seed"])
        self.skeleton = get_skeleton(cfg["data"]["skeleton"])
        self.model = PoseDiffusion(ModelConfig(**cfg["model"])).to(self.device)
        if self.model.cfg.pose_dim != self.skeleton.pose_dim:
            raise ValueError(f"model pose_dim {self.model.cfg.pose_dim} != {self.skeleton.name}'s "
                             f"{self.skeleton.pose_dim}")
        self.speed = resolve_speed(self.t, self.device)
        self.compile_note = ""  # why compilation was given up, when it was
        if self.speed.compile:
            compile_model(self.model)
        if self.t["small_t_share"] and not 1 <= self.t["small_t_max"] <= self.model.schedule.num_steps:
            raise ValueError(f"small_t_max must be 1..{self.model.schedule.num_steps}, got {self.t['small_t_max']}")
        loss = LossModule(self.model, self.t["null_cond_prob"], self.t["small_t_share"], self.t["small_t_max"])
        self.loss_fn = nn.parallel.DistributedDataParallel(loss) if self.world > 1 else loss
        self.opt = make_adam(self.model.parameters(), self.t["lr"], tuple(self.t["betas"]), self.speed.adam)
        self.gen = torch.Generator(self.device).manual_seed(self.t["seed"] * 1000 + self.rank)
        d = cfg["data"]
        self.data = WindowDataset(d["train"], d["motion_filters"], d["min_words"])
        if self.data.skeleton.name != self.skeleton.name:
            raise ValueError(f"{d['train']} holds {self.data.skeleton.name} data, the config says {self.skeleton.name}")
        self.sampler = DistributedSampler(self.data, self.world, self.rank, shuffle=True, seed=self.t["seed"],
                                          drop_last=True)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.elapsed = 0.0  # training wall time accumulated over resumed sessions
        self.epoch_losses: list[float] = []
        self.losses: list[float] = []  # this epoch's step losses so far
        self.pending: list[tuple[dict, torch.Tensor]] = []  # steps.csv rows whose loss has not been read yet
        self.first_step = True
        self.read_tick = time.monotonic()
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        self.init_note: dict = {}  # the warm start's source, recorded in provenance
        state = self._resume_source() if resume else None
        if state is not None:
            self._load_resume(state)
        elif self.t["init_from"]:
            self._warm_start(Path(self.t["init_from"]))
        # Exponential moving average of the weights ([train] ema_decay; 0: none): what the exports hold when kept.
        # It starts from the weights the run starts from, or from the resumed state's average.
        self.ema: list[torch.Tensor] | None = None
        if self.t["ema_decay"]:
            start = (state or {}).get("ema") or [p.detach() for p in self.model.parameters()]
            self.ema = [e.to(self.device, torch.float32, copy=True) for e in start]

    # ---- state -----------------------------------------------------------------------------------------------
    def _resume_source(self) -> dict | None:
        """The state to resume from: the run folder's resume.pt or the compact state (the repository's copy, for a
        fresh machine), whichever is further on; None when there is neither."""
        paths = [self.out / "resume.pt"] + ([Path(self.t["compact_state"])] if self.t["compact_state"] else [])
        states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths if p.is_file()]
        return max(states, key=lambda s: s["step"], default=None)  # on a tie the run folder's

    def _warm_start(self, path: Path) -> None:
        """Start from a checkpoint's weights (a fresh optimiser): fine-tuning the bundled model. With [train]
        init_sha256 the file must be that one (a run that exports over its own source must not restart from it)."""
        ckpt = load_checkpoint(path)
        if self.t["init_sha256"] and ckpt.sha256 != self.t["init_sha256"]:
            raise CheckpointError(f"{path} has sha256 {ckpt.sha256}, the config's warm start is "
                                  f"{self.t['init_sha256']}: restore that file (git) or resume the run (--resume)")
        if ckpt.model.cfg.to_dict() != self.model.cfg.to_dict():
            raise CheckpointError(f"{path} has model {ckpt.model.cfg.to_dict()}, the config "
                                  f"{self.model.cfg.to_dict()}: warm start needs the same architecture")
        self.model.load_state_dict(ckpt.model.state_dict())
        self.init_note = {"init_from": str(path), "init_sha256": ckpt.sha256}

    def _load_resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])  # bf16 moments of a compact state become float32 here
        for group in self.opt.param_groups:  # the saved groups carry the saving run's Adam kind; use this run's
            group["fused"], group["foreach"] = self.opt.defaults["fused"], self.opt.defaults["foreach"]
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.elapsed, self.epoch_losses, self.losses = state["elapsed"], state["epoch_losses"], state["losses"]
        self.init_note = state.get("init", {})
        _set_rng_state(state["rng"][self.rank], self.gen)
        if self.rank == 0:
            for name, text in state.get("logs", {}).items():  # a compact state carries the logs to a fresh machine
                if not (self.out / name).exists():
                    (self.out / name).write_text(text)
            self._truncate_log(self.out / "steps.csv", "step", self.step)
            self._truncate_log(self.out / "epochs.csv", "epoch", self.epoch - 1)

    @staticmethod
    def _truncate_log(path: Path, key: str, last: int) -> None:
        """Drop log rows written after the resume point, so the logs describe exactly one run."""
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = list(rows[0]) if rows else None
            with open(path, "w", newline="") as f:
                if fields:
                    w = csv.DictWriter(f, fields)
                    w.writeheader()
                    w.writerows(r for r in rows if int(r[key]) <= last)

    def save_resume(self, compact: bool = False) -> None:
        """Write resume.pt atomically (rank 0), with every rank's random-generator states.

        compact: write the compact state instead ([train] compact_state, to keep in the repository): the weights in
        float32, Adam's moments rounded to bfloat16 (also in this run's own optimiser, so that a run resumed from
        the file and one that goes on compute the same), the logs; about 8 bytes per parameter."""
        if compact:
            round_moments(self.opt)
        rng = _rng_state(self.gen)
        states = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.rank != 0:
            return
        payload = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                   "batch_in_epoch": self.batch_in_epoch, "step": self.step, "elapsed": self.elapsed,
                   "epoch_losses": self.epoch_losses, "losses": self.losses, "rng": states,
                   "speed": self.speed_record(), "init": self.init_note,
                   **({"ema": [e.cpu() for e in self.ema]} if self.ema is not None else {})}
        path = self.out / "resume.pt"
        if compact:
            payload["optimizer"] = compact_optimizer_state(payload["optimizer"])
            payload["logs"] = {n: (self.out / n).read_text() for n in ("steps.csv", "epochs.csv")
                               if (self.out / n).exists()}
            path = Path(self.t["compact_state"])
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    def param_checksums(self) -> list[str]:
        """sha256 of this rank's state, gathered from every rank (they must agree under DDP).

        DDP keeps parameters identical; BatchNorm running statistics are first taken from rank 0, as DDP's own
        buffer broadcast at the next forward would do."""
        if self.world > 1:
            for buf in self.model.buffers():
                dist.broadcast(buf, 0)
        h = hashlib.sha256()
        for v in self.model.state_dict().values():
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        sums = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(sums, h.hexdigest())
        else:
            sums = [h.hexdigest()]
        return sums

    def update_ema(self) -> None:
        """One step of the weights' moving average: ema += (1 - decay) (weights - ema)."""
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.parameters()], 1 - self.t["ema_decay"])

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """The model holds the moving average of its weights inside the block (exports), with BatchNorm statistics
        measured for them (the running ones belong to the trained weights); its own weights and statistics after."""
        if self.ema is None:
            yield
            return
        params, buffers = list(self.model.parameters()), list(self.model.buffers())
        own = [p.detach().clone() for p in params], [b.clone() for b in buffers]
        with torch.no_grad():
            torch._foreach_copy_(params, self.ema)
        recalibrate_batchnorm(self.model, self._calibration_audio())
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, own[0])
                for b, v in zip(buffers, own[1]):
                    b.copy_(v)

    def _calibration_audio(self) -> Iterator[torch.Tensor]:
        """The same BN_CALIBRATION_WINDOWS training windows' audio for every export, in batches."""
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.t["seed"]))
        order = order[:BN_CALIBRATION_WINDOWS].tolist()
        size = self.t["batch_size"]
        for i in range(0, len(order), size):
            yield torch.stack([self.data[j][1] for j in order[i:i + size]]).to(self.device)

    def export(self, name: str) -> None:
        """Write a native checkpoint with provenance (rank 0), and the configured export copy: the moving average
        of the weights when the run keeps one ([train] ema_decay)."""
        with self.averaged_weights():
            self._export(name)

    def _export(self, name: str) -> None:
        checksums = self.param_checksums()
        if self.rank != 0:
            return
        prov = {"config": self.cfg, "data_sha256": self.data.sha256, "data_windows": len(self.data),
                "epoch": self.epoch, "step": self.step, "train_minutes": round(self.elapsed / 60, 2),
                "metrics": {"train_loss_last_epoch": self.epoch_losses[-1] if self.epoch_losses else None},
                "torch": str(torch.__version__), "world_size": self.world, "device": self.device.type,
                "speed": self.speed_record(), "rank_state_sha256": checksums, **self.init_note}
        save_native(self.out / name, self.model, self.skeleton, prov)
        if self.t["export_path"]:
            Path(self.t["export_path"]).parent.mkdir(parents=True, exist_ok=True)
            save_native(self.t["export_path"], self.model, self.skeleton, prov, getattr(torch, self.t["export_dtype"]))

    # ---- loop ------------------------------------------------------------------------------------------------
    def _log(self, name: str, row: dict) -> None:
        if self.rank != 0:
            return
        path = self.out / name
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def speed_record(self) -> dict:
        """The speed options in effect, with the reason when compilation was given up."""
        return {**self.speed.to_dict(), **({"compile_fallback": self.compile_note} if self.compile_note else {})}

    def train_step(self, x0: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """One optimiser step; the first compiled one falls back to eager, state restored, if compilation fails."""
        x0, audio = x0.to(self.device, non_blocking=True), audio.to(self.device, non_blocking=True)
        args = (self.loss_fn, self.opt, x0, audio, self.gen, self.t["grad_clip"], self.speed.amp,
                self.speed.math_attention)
        if not (self.first_step and self.speed.compile):
            return optimizer_step(*args)
        self.first_step = False
        rng, buffers = _rng_state(self.gen), {k: v.clone() for k, v in self.model.named_buffers()}
        try:
            return optimizer_step(*args)
        except Exception as e:  # noqa: BLE001 - any failure of the compiler stack; a real error recurs eagerly
            self.compile_note = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            print(f"torch.compile failed, training without it: {self.compile_note}", file=sys.stderr, flush=True)
            compile_model(self.model, on=False)
            self.speed = Speed(**{**self.speed.to_dict(), "compile": False})
            _set_rng_state(rng, self.gen)
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])
            return optimizer_step(*args)

    def _read_losses(self) -> None:
        """Wait for the pending steps' losses (one host sync) and write their steps.csv rows."""
        if not self.pending:
            return
        values = torch.stack([loss for _, loss in self.pending]).float().tolist()
        now = time.monotonic()
        rate = self.t["batch_size"] * len(values) / max(now - self.read_tick, 1e-9)
        self.read_tick = now
        for (row, _), v in zip(self.pending, values):
            self.losses.append(v)
            self._log("steps.csv", {"step": row["step"], "epoch": row["epoch"], "loss": f"{v:.6f}",
                                    "samples_per_s": f"{rate:.2f}", "elapsed_s": row["elapsed_s"]})
        self.pending = []
        left = f"; this session stops in {_minutes(self.session_end - now)}" if self.session_end else ""
        self.progress.update(self.step, f"epoch {self.epoch}, loss {values[-1]:.4f}{left}")

    def run(self, max_steps: int = 0, max_minutes: float = 0.0, quiet: bool = False) -> None:
        """Train until the configured epochs, max_steps (total) or max_minutes (this session) are reached.

        The loss is read every speed.log_every steps, at epoch ends and at the last step; time limits and
        periodic saves are checked at those reads, which fall on the same steps in every process. Progress goes to
        stderr (rank 0, unless quiet); on a CPU alone the threads follow the machine's load (model_core/cpu.py)."""
        t = self.t
        if t["batch_size"] % self.world:
            raise ValueError(f"batch_size {t['batch_size']} (global) is not divisible by {self.world} processes")
        start = last_save = self.read_tick = time.monotonic()
        self.session_end = start + 60 * max_minutes if max_minutes else 0.0
        per_epoch = len(epoch_batches(self.sampler, self.epoch, t["batch_size"] // self.world))
        self.progress = ProgressPrinter("train", "step", max_steps or t["epochs"] * per_epoch,
                                        quiet=quiet or self.rank != 0, every=10.0, start_at=self.step)
        # On a CPU alone, threads follow the load unless the config fixes them (ranks on one CPU would take each
        # other's cores; a run that must continue bit for bit needs the same threads throughout)
        adapt = self.device.type == "cpu" and self.world == 1 and not self.speed.threads
        if self.speed.threads:
            torch.set_num_threads(self.speed.threads)
        cuda = self.device.type == "cuda"
        workers = loader_workers(self.cfg["data"]["workers"], self.device, self.world)
        sampler = EpochBatches()
        loader = DataLoader(self.data, batch_sampler=sampler, num_workers=workers, pin_memory=cuda,
                            persistent_workers=workers > 0, prefetch_factor=(4 if cuda else 2) if workers else None)
        stop = False
        while self.epoch < t["epochs"] and not stop:
            batches = epoch_batches(self.sampler, self.epoch, t["batch_size"] // self.world)
            if not batches:
                raise ValueError(f"{len(self.data)} windows over {self.world} ranks give no full batch of "
                                 f"{t['batch_size'] // self.world} per rank")
            sampler.batches = batches[self.batch_in_epoch:]
            tick = time.monotonic()
            for x0, audio in loader:
                loss = self.train_step(x0, audio)
                self.update_ema()
                self.step += 1
                self.batch_in_epoch += 1
                now = time.monotonic()
                self.elapsed += now - tick
                tick = now
                self.pending.append(({"step": self.step, "epoch": self.epoch, "elapsed_s": f"{self.elapsed:.1f}"},
                                     loss))
                if adapt:
                    adapt_threads()
                stop = bool(max_steps and self.step >= max_steps)
                if t["compact_state"] and t["compact_every_steps"] and self.step % t["compact_every_steps"] == 0:
                    self._read_losses()  # the logs the state carries end at this step
                    self.save_resume(compact=True)
                if not (stop or self.step % self.speed.log_every == 0 or self.batch_in_epoch == len(batches)):
                    continue
                self._read_losses()
                stop = stop or bool(max_minutes and now - start >= 60 * max_minutes)
                save = bool(t["save_every_minutes"] and now - last_save >= 60 * t["save_every_minutes"])
                if self.world > 1:  # every rank must stop and save at the same step
                    flags = torch.tensor([float(stop), float(save)], device=self.device)
                    dist.all_reduce(flags)
                    stop, save = bool(flags[0].item()), bool(flags[1].item())
                if stop:
                    break
                if save:
                    self.save_resume()
                    self.export("last.pt")
                    last_save = time.monotonic()
            if self.batch_in_epoch >= len(batches):
                mean = sum(self.losses) / max(len(self.losses), 1)
                if self.world > 1:
                    m = torch.tensor([mean], device=self.device)
                    dist.all_reduce(m)
                    mean = float(m.item()) / self.world
                self.epoch_losses.append(mean)
                self._log("epochs.csv", {"epoch": self.epoch, "loss": f"{mean:.6f}", "step": self.step,
                                         "elapsed_s": f"{self.elapsed:.1f}"})
                self.epoch += 1
                self.batch_in_epoch = 0
                self.losses = []
                if t["export_every_epochs"] and self.epoch % t["export_every_epochs"] == 0:
                    self.export(f"checkpoint_{self.epoch:03d}.pt")
        self.progress.close()
        if t["compact_state"]:
            self.save_resume(compact=True)
        self.save_resume()
        self.export("last.pt")
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


def _minutes(seconds: float) -> str:
    return f"{max(0.0, seconds) / 60:.0f} min"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train DiffGesture (paper defaults; torchrun for several processes).")
    p.add_argument("--config", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt when it exists")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this total optimiser step")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes of this session")
    p.add_argument("--out", default=None, help="run folder (default: the config's train.out)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per process (default: the "
                   "config's; auto: 1 on the CPU, up to 8 on a GPU)")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    if a.out:
        cfg["train"]["out"] = a.out
    if a.workers is not None:
        cfg["data"]["workers"] = a.workers
    trainer = Trainer(cfg, Path(cfg["train"]["out"]), resume=a.resume)
    max_steps = cfg["train"]["max_steps"] if a.max_steps is None else a.max_steps
    max_minutes = cfg["train"]["max_minutes"] if a.max_minutes is None else a.max_minutes
    trainer.run(max_steps, max_minutes, quiet=a.quiet)
    if trainer.rank == 0:
        print(f"stopped at epoch {trainer.epoch}, step {trainer.step}; run folder {trainer.out}")
    if trainer.world > 1:  # all work is saved; skip interpreter finalisation, where gloo's threads can abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
