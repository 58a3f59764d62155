"""Gesture generation for audio of any length: 34-frame windows with a 2 s stride, each seeded with the previous
window's last 4 frames and blended over them (FACTS §8); several variations share one batch.

Memory stays bounded: only the current window's tensors live on the device, finished frames go to numpy.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .network import FPS, SAMPLE_RATE, PoseDiffusion
from .protocol import DEFAULT_FAST_STEPS
from .samplers import make_sampler

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
    # "exact": eager float32, bit-identical to the official code; "fp32": float32 with prepacked oneDNN weights on
    # the CPU (~1e-6 from exact, about 2x faster); "bf16": bf16 autocast; "auto": bf16 for the fast sampler on a
    # CPU that computes bf16 natively, fp32 otherwise (GPUs included: see resolve_precision).
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
        if self.precision not in ("auto", "exact", "fp32", "bf16"):
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


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (else bf16 autocast would be slower)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(settings: GenerationSettings, device: torch.device) -> str:
    """'auto' -> bf16 for the fast sampler on a CPU with native bf16, else fp32. On a GPU this model's steps are
    bound by kernel launches, not arithmetic, and autocast's extra casts made bf16 slower (benchmarks/RESULTS.md)."""
    if settings.precision != "auto":
        return settings.precision
    return "bf16" if settings.sampler == "fast" and device.type == "cpu" and cpu_native_bf16() else "fp32"


def packed_denoiser(model: PoseDiffusion) -> torch.nn.Module:
    """The denoiser with its Linear weights prepacked for oneDNN (CPU float32), cached until the weights change."""
    net = model.diffusion_net.net
    if not torch.backends.mkldnn.is_available():
        return net
    key = tuple(p._version for p in net.parameters()) + tuple(p.data_ptr() for p in net.parameters())
    cached = model.__dict__.get("_packed_denoiser")
    if cached is None or cached[0] != key:
        try:
            with warnings.catch_warnings():  # torch.utils.mkldnn still builds on the deprecated jit.script_method
                warnings.simplefilter("ignore", DeprecationWarning)
                from torch.utils.mkldnn import to_mkldnn
                packed = to_mkldnn(copy.deepcopy(net)).eval()
        except (ImportError, AttributeError, RuntimeError):  # a torch without it: the eager path is equivalent
            packed = net
        cached = (key, packed)
        model.__dict__["_packed_denoiser"] = cached
    return cached[1]


def _window_audio(audio: np.ndarray, i: int) -> np.ndarray:
    duration = len(audio) / SAMPLE_RATE
    start = math.floor(STRIDE_SECONDS * i / duration * len(audio))
    chunk = audio[start:start + WINDOW_SAMPLES]
    return np.pad(chunk, (0, WINDOW_SAMPLES - len(chunk))) if len(chunk) < WINDOW_SAMPLES else chunk


def _fade_out(poses: np.ndarray, n: int = 4) -> np.ndarray:
    """Ease the last 2n frames into the mean pose (zero) with a weighted quadratic fit, as the official option."""
    if poses.shape[1] < 2 * n:
        return poses
    tail = poses[:, -2 * n:].copy()
    tail[:, -n:] = 0.0
    x = np.arange(2 * n)
    w = np.ones(2 * n)
    w[-n:] = 5.0
    flat = tail.transpose(1, 0, 2).reshape(2 * n, -1)
    coef = np.polyfit(x, flat, 2, w=w)
    fitted = np.vander(x, 3) @ coef
    poses = poses.copy()
    poses[:, -2 * n:] = fitted.reshape(2 * n, poses.shape[0], -1).transpose(1, 0, 2)
    return poses


@torch.inference_mode()
def sample_window(model: PoseDiffusion, audio: torch.Tensor, pre_seq: torch.Tensor, settings: GenerationSettings,
                  gen_cpu: torch.Generator, gen_dev: torch.Generator,
                  on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Denoise one 34-frame window for a batch: audio (B, L), pre_seq (B, 34, D+1) -> x_0 (B, 34, D).

    x_T is drawn on the CPU generator and later noise on the device generator, as the official code does."""
    cfg = model.cfg
    sched = model.schedule
    sampler = make_sampler(settings.sampler, sched, settings.steps, settings.stabilizer, settings.eta)
    b = audio.shape[0]
    context = model.context(audio, pre_seq, batch_stats=settings.bn_mode == "official")
    null = model.null_context(b)
    x = torch.randn((b, cfg.n_poses, cfg.pose_dim), generator=gen_cpu).to(audio.device)
    n = len(sampler.timesteps)
    precision = resolve_precision(settings, audio.device)
    bf16 = precision == "bf16"
    net = packed_denoiser(model) if precision == "fp32" and audio.device.type == "cpu" else None
    for i, t in enumerate(sampler.timesteps):
        with torch.autocast(audio.device.type, dtype=torch.bfloat16, enabled=bf16):
            eps = model.guided_eps(x, sched.betas[t].view(1), context, null, settings.guidance, net)
        x = sampler.step(eps.float(), i, x, gen_dev)
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
    if settings.fade_out:
        poses = _fade_out(poses)
    if settings.trim:
        poses = poses[:, :output_frames(len(audio), trim=True)]
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
    device = next(ckpt.model.parameters()).device
    t0 = time.perf_counter()
    poses = generate(ckpt.model, audio, settings, progress=progress, cancel=cancel)
    if not np.isfinite(poses).all():  # nothing non-finite is ever written or keyed
        from .checkpoint import CheckpointError
        raise CheckpointError(f"the model produced non-finite motion (NaN or Inf) for {Path(audio_path).name}: the "
                              "checkpoint's weights are broken (diverged training or damage); nothing was written")
    meta = {"skeleton": ckpt.skeleton.name, "fps": FPS, "seed": settings.seed, "checkpoint_sha256": ckpt.sha256,
            "settings": settings.to_dict(), "precision": resolve_precision(settings, device), "audio": str(audio_path),
            "duration": len(audio) / SAMPLE_RATE, "device": str(device),
            "seconds": round(time.perf_counter() - t0, 3)}
    write_result(output, poses, poses_to_canonical(poses, ckpt.skeleton), meta)
    return {"frames": int(poses.shape[1]), "variations": int(poses.shape[0]), **meta}
