"""Gesture generation for audio of any length: 34-frame windows with a 2 s stride, each seeded with the previous
window's last 4 frames and blended over them (FACTS §8); several variations share one batch.

Memory stays bounded: only the current window's tensors live on the device, finished frames go to numpy.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .network import FPS, SAMPLE_RATE, PoseDiffusion
from .precision import PRECISIONS, choose_precision, guided_step
from .protocol import DEFAULT_FAST_STEPS
from .samplers import ddim_timesteps, make_sampler

WINDOW_SAMPLES = int(34 / 15 * SAMPLE_RATE)  # 36,266: the official long-audio window
STRIDE_SECONDS = 2.0
UNIT_SECONDS = 34 / 15


class Cancelled(Exception):
    """Raised when the caller's cancel check returns True; nothing partial is returned."""


@dataclass
class GenerationSettings:
    """How to sample. The defaults are the product's (fast sampler); `paper()` gives the paper's settings."""

    sampler: str = "fast"  # "paper" (500 steps, official) or "fast" (DDIM)
    steps: int = DEFAULT_FAST_STEPS  # fast sampler only
    guidance: float = 1.15
    stabilizer: bool = True
    eta: float = 1.0  # fast sampler noise: 1 = ancestral (DDPM-like) steps, 0 = deterministic DDIM
    seed: int = 0
    variations: int = 1
    bn_mode: str = "eval"  # "eval": running statistics; "official": batch statistics as the official scripts
    fade_out: bool = False
    trim: bool = True  # cut the output to the audio's duration (the official code keeps whole windows)
    # "exact": eager float32, bit-identical to the official code on the same CPU; "fp32": float32 with prepacked
    # oneDNN weights on the CPU (~1e-6 from exact); "bf16": bf16 autocast; "auto": the fastest of these on this
    # CPU, measured once and cached (precision.py); fp32 on GPUs.
    precision: str = "auto"

    @classmethod
    def paper(cls, **kw) -> "GenerationSettings":
        return cls(**{"sampler": "paper", "bn_mode": "official", "trim": False, "precision": "exact", **kw})

    def validate(self) -> None:
        """Every field's type and range, so that a request from a file, a socket or a panel fails here, named."""
        for name, kind in (("steps", int), ("seed", int), ("variations", int), ("guidance", float), ("eta", float),
                           ("stabilizer", bool), ("fade_out", bool), ("trim", bool)):
            value = getattr(self, name)
            ok = type(value) is bool if kind is bool else type(value) is int if kind is int else \
                type(value) in (int, float) and math.isfinite(value)
            if not ok:
                what = {int: "an integer", float: "a finite number", bool: "true or false"}[kind]
                raise ValueError(f"{name} must be {what}, not {value!r:.40}")
        if not -2 ** 63 <= self.seed < 2 ** 64:
            raise ValueError(f"seed must be within -2^63..2^64-1, not {self.seed}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be within 0..1 (0 = deterministic DDIM, 1 = ancestral steps), not {self.eta}")
        if self.sampler not in ("paper", "fast"):
            raise ValueError(f"sampler must be 'paper' or 'fast', not {self.sampler!r}")
        if self.bn_mode not in ("eval", "official"):
            raise ValueError(f"bn_mode must be 'eval' or 'official', not {self.bn_mode!r}")
        if not 1 <= self.variations <= 64:
            raise ValueError(f"variations must be 1..64, not {self.variations}")
        if self.sampler == "fast" and not 1 <= self.steps <= 500:
            raise ValueError(f"steps must be 1..500, not {self.steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, exact, fp32 or bf16, not {self.precision!r}")
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= 20):
            raise ValueError(f"guidance scale must be within 0..20, not {self.guidance}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    window: int  # windows finished
    windows: int
    step: int  # steps finished in the current window
    steps: int

    @property
    def fraction(self) -> float:
        return (self.window + self.step / max(self.steps, 1)) / max(self.windows, 1)


def window_count(n_samples: int, sr: int = SAMPLE_RATE) -> int:
    """Number of windows the official long-audio generator uses for a clip of n_samples."""
    duration = n_samples / sr
    return 1 if duration < UNIT_SECONDS else math.ceil((duration - UNIT_SECONDS) / STRIDE_SECONDS) + 1


def output_frames(n_samples: int, trim: bool = True, sr: int = SAMPLE_RATE) -> int:
    """Frames produced for a clip: whole windows (34 + 30 (K-1)), or cut to the clip's span at 15 fps."""
    full = 34 + 30 * (window_count(n_samples, sr) - 1)
    return min(full, math.floor(n_samples / sr * FPS) + 1) if trim else full


def steps_run(settings: GenerationSettings, num_steps: int) -> int:
    """Denoising steps per window that `settings` really runs (the paper sampler ignores `steps`)."""
    return num_steps if settings.sampler == "paper" else len(ddim_timesteps(num_steps, settings.steps))


def resolve_device(name: str = "auto") -> tuple[torch.device, str]:
    """'auto' | 'cuda' | 'cpu' -> a device and a note saying why when the request could not be honoured."""
    if name not in ("auto", "cuda", "cpu") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cuda or cpu, not {name!r}")
    if name == "cpu":
        return torch.device("cpu"), ""
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name), ""
    return torch.device("cpu"), ("" if name == "auto" else "CUDA was requested but is not available "
                                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); using the CPU")


def _window_start(n_samples: int, i: int) -> int:
    """First sample of window i, as the official code places it (start time / duration of the clip)."""
    return math.floor(STRIDE_SECONDS * i / (n_samples / SAMPLE_RATE) * n_samples)


def _window_audio(audio: np.ndarray, i: int) -> np.ndarray:
    start = _window_start(len(audio), i)
    chunk = audio[start:start + WINDOW_SAMPLES]
    return np.pad(chunk, (0, WINDOW_SAMPLES - len(chunk))) if len(chunk) < WINDOW_SAMPLES else chunk


def fade_out(poses: np.ndarray, end_padding: int, n: int = 4) -> tuple[np.ndarray, int]:
    """The official fade_out option (generate_gestures in test_ted.py), for each variation: from the frame where the
    audio ends (the last window's zero padding, `end_padding` samples, measured back from the end), refit 2n frames
    with a quadratic whose first and last points weigh 5, ending in n frames of the mean pose (zero); every frame
    after the fade is the mean pose too. Returns the poses (padded if the fade runs past them) and the fade's end."""
    start = poses.shape[1] - int(end_padding / SAMPLE_RATE * FPS)
    end = start + 2 * n
    if poses.shape[1] < end:
        poses = np.pad(poses, [(0, 0), (0, end - poses.shape[1]), (0, 0)])
    poses = poses.copy()
    poses[:, end - n:] = 0.0
    x = np.arange(2 * n)
    w = np.ones(2 * n)
    w[0] = w[-1] = 5.0
    for v in range(poses.shape[0]):
        coef = np.polyfit(x, poses[v, start:end], 2, w=w)  # (3, D)
        fitted = np.zeros((2 * n, coef.shape[1]))
        for c in coef:  # Horner, as numpy.poly1d evaluates it
            fitted = fitted * x[:, None] + c
        poses[v, start:end] = fitted
    return poses, end


def denoise(model: PoseDiffusion, audio: torch.Tensor, pre_seq: torch.Tensor, settings: GenerationSettings,
            gen_cpu: torch.Generator, gen_dev: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
    """The reverse process for one 34-frame window: yields (schedule index t, x_{t-1}) after every step.

    x_T is drawn on the CPU generator and later noise on the device generator, as the official code does. Call it
    under torch.inference_mode() (sample_window does)."""
    cfg = model.cfg
    sched = model.schedule
    sampler = make_sampler(settings.sampler, sched, settings.steps, settings.stabilizer, settings.eta)
    b = audio.shape[0]
    context = model.context(audio, pre_seq, batch_stats=settings.bn_mode == "official")
    null = model.null_context(b)
    x = torch.randn((b, cfg.n_poses, cfg.pose_dim), generator=gen_cpu).to(audio.device)
    precision, _ = choose_precision(model, settings.precision, settings.sampler, b, settings.guidance, audio.device)
    for i, t in enumerate(sampler.timesteps):
        eps = guided_step(model, precision, x, sched.betas[t].view(1), context, null, settings.guidance)
        x = sampler.step(eps, i, x, gen_dev)
        yield t, x


@torch.inference_mode()
def sample_window(model: PoseDiffusion, audio: torch.Tensor, pre_seq: torch.Tensor, settings: GenerationSettings,
                  gen_cpu: torch.Generator, gen_dev: torch.Generator,
                  on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Denoise one 34-frame window for a batch: audio (B, L), pre_seq (B, 34, D+1) -> x_0 (B, 34, D)."""
    n = steps_run(settings, model.schedule.num_steps)
    for i, (_, x) in enumerate(denoise(model, audio, pre_seq, settings, gen_cpu, gen_dev)):
        if on_step is not None:
            on_step(i + 1, n)
    return x


def generate(model: PoseDiffusion, audio: np.ndarray, settings: GenerationSettings | None = None,
             progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None,
             seed_poses: np.ndarray | None = None) -> np.ndarray:
    """Normalised poses (variations, frames, pose_dim) at 15 fps for a mono 16 kHz waveform of any length.

    seed_poses: optional (4, pose_dim) normalised poses to continue from; without it window 0 has no seed."""
    settings = settings or GenerationSettings()
    settings.validate()
    cfg = model.cfg
    device = next(model.parameters()).device
    precision, _ = choose_precision(model, settings.precision, settings.sampler, settings.variations,
                                    settings.guidance, device)
    settings = dataclasses.replace(settings, precision=precision)  # measured once, not per window
    n_win = window_count(len(audio))
    gen_cpu = torch.Generator().manual_seed(settings.seed)
    gen_dev = gen_cpu if device.type == "cpu" else torch.Generator(device).manual_seed(settings.seed)
    v, d, p = settings.variations, cfg.pose_dim, cfg.n_pre_poses
    pre_seq = torch.zeros(v, cfg.n_poses, d + 1, device=device)
    if seed_poses is not None:
        pre_seq[:, :p, :d] = torch.as_tensor(np.asarray(seed_poses, np.float32).reshape(p, d), device=device)
        pre_seq[:, :p, d] = 1
    chunks: list[np.ndarray] = []
    prev_tail: np.ndarray | None = None
    for w in range(n_win):
        def on_step(step: int, steps: int, w=w) -> None:
            if cancel is not None and cancel():
                raise Cancelled("generation cancelled")
            if progress is not None:
                progress(Progress(w, n_win, step, steps))
        clip = torch.from_numpy(np.ascontiguousarray(_window_audio(audio, w))).to(device)
        out = sample_window(model, clip.unsqueeze(0).expand(v, -1), pre_seq, settings, gen_cpu, gen_dev, on_step)
        out_np = out.float().cpu().numpy()
        pre_seq = torch.zeros_like(pre_seq)
        pre_seq[:, :p, :d] = out[:, -p:]
        pre_seq[:, :p, d] = 1
        if prev_tail is not None:
            j = np.arange(p, dtype=np.float32).reshape(1, p, 1)
            out_np[:, :p] = prev_tail * (p - j) / (p + 1) + out_np[:, :p] * (j + 1) / (p + 1)
        if w < n_win - 1:
            prev_tail = out_np[:, -p:].copy()
            out_np = out_np[:, :-p]
        chunks.append(out_np)
    poses = np.concatenate(chunks, axis=1)
    keep = output_frames(len(audio), trim=True)
    if settings.fade_out:
        last = len(audio) - _window_start(len(audio), n_win - 1)  # samples in the last window, before padding
        poses, fade_end = fade_out(poses, max(0, WINDOW_SAMPLES - last))
        keep = max(keep, fade_end)  # trimming keeps the whole fade
    if settings.trim:
        poses = poses[:, :keep]
    return poses


def generate_file(ckpt, audio_path: str, output: str, settings: GenerationSettings,
                  progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """Load speech, generate on the checkpoint's current device, write the result file; return its metadata."""
    from .audio import load_audio
    from .protocol import check_output, write_result
    from .skeleton import poses_to_canonical
    settings.validate()
    check_output(output, keep=(audio_path,))
    audio = load_audio(audio_path)
    model = ckpt.model
    device = next(model.parameters()).device
    precision, how = choose_precision(model, settings.precision, settings.sampler, settings.variations,
                                      settings.guidance, device)
    settings = dataclasses.replace(settings, precision=precision,
                                   steps=steps_run(settings, model.schedule.num_steps))  # what really runs
    t0 = time.perf_counter()
    poses = generate(model, audio, settings, progress=progress, cancel=cancel)
    if not np.isfinite(poses).all():  # nothing non-finite is ever written or keyed
        from .checkpoint import CheckpointError
        raise CheckpointError(f"the model produced non-finite motion (NaN or Inf) for {Path(audio_path).name}: the "
                              "checkpoint's weights are broken (diverged training or damage); nothing was written")
    meta = {"skeleton": ckpt.skeleton.name, "fps": FPS, "seed": settings.seed, "checkpoint_sha256": ckpt.sha256,
            "settings": settings.to_dict(), "precision": precision, "precision_choice": how,
            "steps": settings.steps, "audio": str(audio_path), "duration": len(audio) / SAMPLE_RATE,
            "device": str(device), "seconds": round(time.perf_counter() - t0, 3)}
    write_result(output, poses, poses_to_canonical(poses, ckpt.skeleton), meta)
    return {"frames": int(poses.shape[1]), "variations": int(poses.shape[0]), **meta}
