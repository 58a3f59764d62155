"""Gesture generation for audio of any length: 34-frame windows with a 2 s stride, each seeded with the previous
window's last 4 frames and blended over them (FACTS §8); several variations share one batch.

Memory stays bounded: only the current window's tensors live on the device, finished frames go to numpy.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .cpu import adapt_threads
from .network import PoseDiffusion, VarianceSchedule
from .precision import choose_precision, guided_step
from .protocol import ErrorKind, check_result_output, write_result
from .samplers import RowGenerators, Sampler, make_sampler, randn
from .settings import DEVICES, GenerationSettings
from .timing import FPS, SAMPLE_RATE, WINDOW_SAMPLES, output_frames, window_count, window_start



class Cancelled(Exception):
    """Raised when the caller's cancel check returns True; nothing partial is returned."""

    kind = ErrorKind.CANCELLED


@dataclass
class Progress:
    window: int  # windows finished
    windows: int
    step: int  # steps finished in the current window
    steps: int

    @property
    def fraction(self) -> float:
        return (self.window + self.step / max(self.steps, 1)) / max(self.windows, 1)


def sampler_for(settings: GenerationSettings, schedule: VarianceSchedule) -> Sampler:
    """The sampler `settings` name, on a model's noise schedule."""
    return make_sampler(settings.sampler, schedule, settings.steps, settings.stabilizer, settings.eta, settings.solver)


def steps_run(settings: GenerationSettings, schedule: VarianceSchedule) -> int:
    """Denoising steps per window that `settings` really runs, as their sampler reports them: its timesteps (the
    paper sampler ignores `steps`; a fast one may merge steps that round to the same index)."""
    return len(sampler_for(settings, schedule).timesteps)


def resolve_device(name: str = "auto") -> tuple[torch.device, str]:
    """'auto' | 'cuda' | 'cpu' (settings.DEVICES) or 'cuda:N' -> a device and a note saying why when the request
    could not be honoured."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, not {name!r}")
    if name == "cpu":
        return torch.device("cpu"), ""
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name), ""
    return torch.device("cpu"), ("" if name == "auto" else "CUDA was requested but is not available "
                                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); using the CPU")


def _window_audio(audio: np.ndarray, i: int) -> np.ndarray:
    return audio_window(audio, window_start(len(audio), i))


def audio_window(audio: np.ndarray, start: int) -> np.ndarray:
    """The WINDOW_SAMPLES samples of a window's audio from sample `start`, zero-padded past the clip's end."""
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


# known(x, t) -> x: after each step, put what is known of the window into the sampler's state x at schedule index t
# (t = 0: the finished window). Re-rolling a range holds the kept frames this way (reroll.py).
KnownFrames = Callable[[torch.Tensor, int], torch.Tensor]


def denoise(model: PoseDiffusion, context: torch.Tensor, settings: GenerationSettings,
            gen_cpu: torch.Generator | RowGenerators, gen_dev: torch.Generator | RowGenerators,
            known: KnownFrames | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The reverse process for one 34-frame window given its context (B, 34, in_size): yields (schedule index t,
    x_{t-1}) after every step.

    x_T is drawn on the CPU generator and later noise on the device generator, as the official code does. Call it
    under torch.inference_mode() (sample_window does). known: see KnownFrames; it is applied to x_T too."""
    cfg = model.cfg
    sched = model.schedule
    sampler = sampler_for(settings, sched)
    b, device = context.shape[0], context.device
    null = model.null_context(b)
    x = randn((b, cfg.n_poses, cfg.pose_dim), gen_cpu).to(device)
    if known is not None:
        x = known(x, sampler.timesteps[0])
    precision, _ = choose_precision(model, settings.precision, settings.sampler, b, settings.guidance, device)
    for i, t in enumerate(sampler.timesteps):
        eps = guided_step(model, precision, x, sched.betas[t].view(1), context, null, settings.guidance)
        x = sampler.step(eps, i, x, gen_dev)
        if known is not None:
            x = known(x, sampler.timesteps[i + 1] if i + 1 < len(sampler.timesteps) else 0)
        yield t, x


@torch.inference_mode()
def sample_window(model: PoseDiffusion, audio: torch.Tensor, pre_seq: torch.Tensor, settings: GenerationSettings,
                  gen_cpu: torch.Generator | RowGenerators, gen_dev: torch.Generator | RowGenerators,
                  on_step: Callable[[int, int], None] | None = None, context: torch.Tensor | None = None,
                  known: KnownFrames | None = None) -> torch.Tensor:
    """Denoise one 34-frame window for a batch: audio (B, L), pre_seq (B, 34, D+1) -> x_0 (B, 34, D).

    context: the window's context when the caller built it (clips side by side each encode their own audio).
    known: frames held to given values while sampling (see KnownFrames). The CPU threads follow the machine's load,
    looked at again for every window (cpu.py)."""
    adapt_threads()
    if context is None:
        context = model.context(audio, pre_seq, batch_stats=settings.bn_mode == "official")
    n = steps_run(settings, model.schedule)
    for i, (_, x) in enumerate(denoise(model, context, settings, gen_cpu, gen_dev, known)):
        if on_step is not None:
            on_step(i + 1, n)
    return x


class ClipRun:
    """One clip's long-audio generation as a sequence of windows, each seeded with the previous window's last 4
    raw frames and blended over them (FACTS §8). generate() runs one clip; generate-batch runs several side by side,
    each with its own random streams, so a clip's windows are the same whichever clips share its batches."""

    def __init__(self, model: PoseDiffusion, audio: np.ndarray, settings: GenerationSettings,
                 seed_poses: np.ndarray | None = None, first_frame: int | None = None, windows: int | None = None):
        """first_frame, windows: run `windows` windows from that frame (15 fps), each given the audio under its own
        frames (a re-roll); by default the whole clip's windows, placed as the official code places them."""
        cfg = model.cfg
        self.model, self.audio, self.settings = model, audio, settings
        self.device = next(model.parameters()).device
        self.first_frame = first_frame
        self.n_win, self.w = windows or window_count(len(audio)), 0
        self.gen_cpu = torch.Generator().manual_seed(settings.seed)
        self.gen_dev = self.gen_cpu if self.device.type == "cpu" else \
            torch.Generator(self.device).manual_seed(settings.seed)
        v, d, p = settings.variations, cfg.pose_dim, cfg.n_pre_poses
        self.pre_seq = torch.zeros(v, cfg.n_poses, d + 1, device=self.device)
        if seed_poses is not None:
            self.pre_seq[:, :p, :d] = torch.as_tensor(np.asarray(seed_poses, np.float32).reshape(-1, p, d),
                                                      device=self.device)  # one seed for all, or one each
            self.pre_seq[:, :p, d] = 1
        self.chunks: list[np.ndarray] = []
        self.prev_tail: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return self.w >= self.n_win

    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next window's audio (V, L) and seed sequence (V, 34, D+1)."""
        if self.first_frame is None:
            audio = _window_audio(self.audio, self.w)
        else:  # the window's first frame is first_frame + 30 w: its audio starts at that frame's time
            frame = self.first_frame + (self.model.cfg.n_poses - self.model.cfg.n_pre_poses) * self.w
            audio = audio_window(self.audio, round(frame * SAMPLE_RATE / FPS))
        clip = torch.from_numpy(np.ascontiguousarray(audio)).to(self.device)
        return clip.unsqueeze(0).expand(self.settings.variations, -1), self.pre_seq

    @torch.inference_mode()
    def context(self) -> torch.Tensor:
        audio, pre_seq = self.window()
        return self.model.context(audio, pre_seq, batch_stats=self.settings.bn_mode == "official")

    def sample_next(self, progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None,
                    what: str = "generation", known: KnownFrames | None = None) -> None:
        """Sample the next window on its own and take it, checking `cancel` and reporting progress at every step."""
        def on_step(step: int, steps: int) -> None:
            if cancel is not None and cancel():
                raise Cancelled(f"{what} cancelled")
            if progress is not None:
                progress(Progress(self.w, self.n_win, step, steps))
        self.take(sample_window(self.model, *self.window(), self.settings, self.gen_cpu, self.gen_dev, on_step,
                                known=known))

    def take(self, out: torch.Tensor) -> None:
        """Accept the sampled window (V, 34, D): seed the next window with its last frames, blend over the previous."""
        p, d = self.model.cfg.n_pre_poses, self.model.cfg.pose_dim
        out_np = out.float().cpu().numpy()
        self.pre_seq = torch.zeros_like(self.pre_seq)
        self.pre_seq[:, :p, :d] = out[:, -p:]
        self.pre_seq[:, :p, d] = 1
        if self.prev_tail is not None:
            j = np.arange(p, dtype=np.float32).reshape(1, p, 1)
            out_np[:, :p] = self.prev_tail * (p - j) / (p + 1) + out_np[:, :p] * (j + 1) / (p + 1)
        if self.w < self.n_win - 1:
            self.prev_tail = out_np[:, -p:].copy()
            out_np = out_np[:, :-p]
        self.chunks.append(out_np)
        self.w += 1

    def poses(self) -> np.ndarray:
        """The finished clip as sampled: the windows joined, faded and trimmed as the settings say (their intensity
        is applied where the poses become directions: skeleton.directions_at)."""
        poses = np.concatenate(self.chunks, axis=1)
        keep = output_frames(len(self.audio), trim=True)
        if self.settings.fade_out:
            last = len(self.audio) - window_start(len(self.audio), self.n_win - 1)  # samples before padding
            poses, fade_end = fade_out(poses, max(0, WINDOW_SAMPLES - last))
            keep = max(keep, fade_end)  # trimming keeps the whole fade
        return poses[:, :keep] if self.settings.trim else poses


def generate(model: PoseDiffusion, audio: np.ndarray, settings: GenerationSettings | None = None,
             progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None,
             seed_poses: np.ndarray | None = None) -> np.ndarray:
    """Normalised poses as sampled (variations, frames, pose_dim) at 15 fps for a mono 16 kHz waveform of any length;
    settings.intensity is applied to them by skeleton.at_intensity where they are used.

    seed_poses: optional (4, pose_dim) normalised poses to continue from; without it window 0 has no seed."""
    settings = settings or GenerationSettings()
    settings.validate()
    run = ClipRun(model, audio, resolved(settings, model)[0], seed_poses)  # auto precision chosen once, not per window
    while not run.done:
        run.sample_next(progress, cancel)
    return run.poses()


def output_paths(output: str | Path, variations: int, skel, keep: tuple = ()) -> list[Path]:
    """The files a generation writes, each checked before any work starts (files.check_output): the .npz result
    file, or for a .bvh path a BVH of the model's skeleton per variation (the first at `output`, the others
    numbered NAME_v2.bvh ...). Each may be new or this project's own file of that kind, never one of `keep`."""
    from .files import check_output
    output = Path(output)
    if output.suffix.lower() != ".bvh":
        return [check_result_output(output, keep)]
    from .bvh import is_own_bvh
    paths = [output if v == 0 else output.with_name(f"{output.stem}_v{v + 1}.bvh") for v in range(variations)]
    return [check_output(p, keep, ours=lambda q: is_own_bvh(q, skel), kind=f"a BVH DiffGesture wrote for the "
                         f"{skel.name} skeleton") for p in paths]


def save_result(ckpt, output: str | Path, poses: np.ndarray, settings: GenerationSettings, audio_path: str | Path,
                n_samples: int, precision_choice: str, seconds: float) -> dict:
    """Write one generation's result to output_paths(output): the .npz result file (the poses as sampled, canonical
    directions at the settings' intensity, metadata), or a BVH of the model's skeleton per variation (directions);
    return its summary. Non-finite motion is a CheckpointError and nothing is written."""
    from .skeleton import directions_at
    directions = directions_at(poses, settings.intensity, ckpt.skeleton)
    if not (np.isfinite(poses).all() and np.isfinite(directions).all()):  # nothing non-finite is written or keyed
        from .checkpoint import CheckpointError
        raise CheckpointError(f"the model produced non-finite motion (NaN or Inf) for {Path(audio_path).name}: the "
                              "checkpoint's weights or its mean pose are broken (diverged training or damage); "
                              "nothing was written")
    meta = {"skeleton": ckpt.skeleton.name, "fps": FPS, "seed": settings.seed, "checkpoint_sha256": ckpt.sha256,
            "settings": settings.to_dict(), "precision": settings.precision, "precision_choice": precision_choice,
            "steps": settings.steps, "audio": str(Path(audio_path).absolute()), "duration": n_samples / SAMPLE_RATE,
            "device": str(next(ckpt.model.parameters()).device), "seconds": round(seconds, 3)}
    paths = output_paths(output, len(poses), ckpt.skeleton, (audio_path,))  # again: nothing took their place since
    if Path(output).suffix.lower() == ".bvh":
        from .bvh import write_bvh
        for path, take in zip(paths, directions):
            write_bvh(path, take, ckpt.skeleton)
    else:
        write_result(output, poses, directions, meta)
    return {"frames": int(poses.shape[1]), "variations": int(poses.shape[0]), **meta}


def resolved(settings: GenerationSettings, model: PoseDiffusion, batch: int = 1) -> tuple[GenerationSettings, str]:
    """The settings as they will run (auto precision chosen for this batch of clips, the steps really taken) and how
    the precision was chosen."""
    device = next(model.parameters()).device
    precision, how = choose_precision(model, settings.precision, settings.sampler, batch * settings.variations,
                                      settings.guidance, device)
    return dataclasses.replace(settings, precision=precision, steps=steps_run(settings, model.schedule)), how


def generate_file(ckpt, audio_path: str, output: str, settings: GenerationSettings,
                  progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """Load speech, generate on the checkpoint's current device, write the result file; return its metadata."""
    from .audio import load_audio
    settings.validate()
    output_paths(output, settings.variations, ckpt.skeleton, (audio_path,))
    audio = load_audio(audio_path)
    if progress is not None:  # a sign of life before auto precision's first measurement (under a second when idle)
        progress(Progress(0, window_count(len(audio)), 0, steps_run(settings, ckpt.model.schedule)))
    settings, how = resolved(settings, ckpt.model)
    t0 = time.perf_counter()
    poses = generate(ckpt.model, audio, settings, progress=progress, cancel=cancel)
    return save_result(ckpt, output, poses, settings, audio_path, len(audio), how, time.perf_counter() - t0)
