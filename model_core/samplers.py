"""Reverse-diffusion samplers over the model's variance schedule; they never call the network.

Each sampler exposes `timesteps` (schedule indices, high to low: one step each, so their number is the steps it
runs) and `step(eps, i, x, gen)` that maps x at `timesteps[i]` to the next state given the guided noise prediction.
The denoising loop lives in pipeline.py; the forward process they invert, `add_noise`, lives with the schedule
(network.py).

* PaperSampler: the official 500-step ancestral sampler with the Diffusion Gesture Stabilizer (FACTS §5). Its
  noise is drawn in the official order, so with the same seed it reproduces the official sample bit for bit.
* DDIMSampler: K-step DDIM (Song et al. 2021, eq. 12) on the same schedule, on steps quadratic in t; with eta > 0
  its noise below t0 is made temporally shared exactly like the stabilizer's.
* DPMSolverSampler: K-step DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic and second order, so
  fewer steps reach the same sample; it draws no noise after x_T.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the schedule's buffers are all a sampler reads; it never imports the network
    from .network import VarianceSchedule

STABILIZER_T0 = 25


class RowGenerators:
    """Independent random streams for consecutive blocks of a batch's rows, so that clips sampled side by side
    (generate-batch) draw exactly the numbers each would draw alone: every draw is split by block, in order."""

    def __init__(self, blocks: list[tuple[torch.Generator, int]]):
        self.blocks = blocks


def randn(shape: tuple[int, ...], gen: torch.Generator | RowGenerators, device: torch.device | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal draws of `shape` from one generator, or block by block from row generators."""
    if isinstance(gen, RowGenerators):
        return torch.cat([torch.randn((n, *shape[1:]), generator=g, device=device, dtype=dtype) for g, n in gen.blocks])
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def stabilized_noise(shape: torch.Size, t: int, t0: int, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gesture Stabilizer noise: z_n = sqrt(1 - sa^2) eps_n + sa eps_0 with sa = ((t - t0)/t0)^2 (paper eq. 9).

    One shared draw eps_0 (B, 1, D), then one (B, 1, D) draw per frame in frame order (the official order)."""
    b, n, d = shape
    sa = ((t - t0) / t0) ** 2
    eps0 = randn((b, 1, d), gen, like.device, like.dtype)
    epsn = torch.cat([randn((b, 1, d), gen, like.device, like.dtype) for _ in range(n)], dim=1)
    return math.sqrt(1 - sa ** 2) * epsn + sa * eps0


class PaperSampler:
    """x_{t-1} = 1/sqrt(a_t) (x_t - (1 - a_t)/sqrt(1 - abar_t) eps) + sigma_t z, t = T..1 (paper eq. 4)."""

    def __init__(self, schedule: VarianceSchedule, stabilizer: bool = True, t0: int = STABILIZER_T0):
        self.s = schedule
        self.stabilizer = stabilizer
        self.t0 = t0
        self.timesteps = list(range(schedule.num_steps, 0, -1))

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = self.timesteps[i]
        # 1. the official code draws a full z first (before the network call, which uses no random numbers)
        z = randn(x.shape, gen, x.device, x.dtype) if t > 1 else torch.zeros_like(x)
        # 2. inside the stabilizer range that z is discarded and replaced by frame-shared noise
        if self.stabilizer and 2 <= t < self.t0:
            z = stabilized_noise(x.shape, t, self.t0, x, gen)
        alpha, alpha_bar, sigma = self.s.alphas[t], self.s.alpha_bars[t], self.s.sigmas_inflex[t]
        c0 = 1.0 / torch.sqrt(alpha)
        c1 = (1 - alpha) / torch.sqrt(1 - alpha_bar)
        return c0 * (x - c1 * eps) + sigma * z


def lambda_timesteps(schedule: VarianceSchedule, k: int) -> list[int]:
    """K schedule indices from T down to 1 spread evenly in log-SNR lambda = log(sqrt(abar) / sqrt(1 - abar)), the
    variable DPM-Solver integrates in (Lu et al. 2022, §3.3): even in t, its last steps jump from lambda 1.3 to 4.6.
    Nudged to K distinct indices where rounding meets (near T, where lambda moves slowly)."""
    n = schedule.num_steps
    _check_steps(n, k)
    abar = schedule.alpha_bars[1:].double().numpy()
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
    return _distinct([int(np.argmin(np.abs(lam - x))) + 1 for x in np.linspace(lam[-1], lam[0], k)], n)


def quadratic_timesteps(num_steps: int, k: int) -> list[int]:
    """K schedule indices from T down to 1, quadratic in t (DDIM's "quad" spacing, Song et al. 2021, appendix D.2):
    steps are dense near t = 0, where the last rounding of the pose is decided: for K = 12, 500 ... 17, 5, 1."""
    _check_steps(num_steps, k)
    return _distinct([int(round(x * x)) + 1 for x in np.linspace(math.sqrt(num_steps - 1), 0, k)], num_steps)


def _check_steps(num_steps: int, k: int) -> None:
    """Refuse (ValueError) a K outside 1..T: a fast sampler takes K of the schedule's T steps."""
    if not 1 <= k <= num_steps:
        raise ValueError(f"the fast sampler needs 1..{num_steps} steps, got {k}")


def _distinct(ts: list[int], n: int) -> list[int]:
    """Indices made strictly decreasing from T = n down to 1 by nudging the ones that rounding made equal."""
    k = len(ts)
    for i in range(k - 2, -1, -1):  # strictly decreasing from the bottom up ...
        ts[i] = max(ts[i], ts[i + 1] + 1)
    ts[0] = n
    for i in range(1, k):  # ... and from T down
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts


class DDIMSampler:
    """x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps + s z, x0_hat from eps (DDIM eq. 12)."""

    def __init__(self, schedule: VarianceSchedule, steps: int = 50, eta: float = 0.0, stabilizer: bool = True,
                 t0: int = STABILIZER_T0):
        self.s = schedule
        self.eta = eta
        self.stabilizer = stabilizer
        self.t0 = t0
        self.timesteps = quadratic_timesteps(schedule.num_steps, steps)

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = self.timesteps[i]
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0
        ab, ab_prev = self.s.alpha_bars[t], self.s.alpha_bars[t_prev]  # alpha_bars[0] == 1
        # 1. the "predicted x_0" of DDIM eq. 12: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x0 = (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        # 2. sigma_t(eta) of DDIM eq. 16: eta = 1 is the DDPM posterior's spread, eta = 0 deterministic
        s = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        # 3. eq. 12 without its noise: sqrt(abar_prev) x0 + "direction pointing to x_t" sqrt(1 - abar_prev - s^2) eps
        x_prev = torch.sqrt(ab_prev) * x0 + torch.sqrt((1 - ab_prev - s ** 2).clamp(min=0)) * eps
        # 4. eq. 12's random noise s z, none on the last step; below t0 z is the stabilizer's (paper eq. 9)
        if self.eta > 0 and t_prev > 0:
            if self.stabilizer and t < self.t0:
                z = stabilized_noise(x.shape, t, self.t0, x, gen)
            else:
                z = randn(x.shape, gen, x.device, x.dtype)
            x_prev = x_prev + s * z
        return x_prev


class DPMSolverSampler:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): with
    lambda = log(sqrt(abar) / sqrt(1 - abar)) and h the step in lambda,
    x_s = sigma_s / sigma_t x_t - alpha_s (e^-h - 1) D, where D extrapolates the last two x0 predictions
    (D = (1 + 1/2r) x0_t - 1/2r x0_prev, r = h_prev / h); first order on the first step and on the last (into
    t = 0, where sigma = 0), as diffusers' lower_order_final does for few steps. Steps are even in lambda."""

    def __init__(self, schedule: VarianceSchedule, steps: int = 10):
        self.s = schedule
        self.timesteps = lambda_timesteps(schedule, steps)
        self.prev: tuple[torch.Tensor, float] | None = None  # the last x0 prediction and the step h that led to it

    def _lam(self, t: int) -> float:
        ab = float(self.s.alpha_bars[t].double())
        return 0.5 * (math.log(ab) - math.log1p(-ab))

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = self.timesteps[i]
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0
        ab = self.s.alpha_bars[t]
        x0 = (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        if t_prev == 0:  # sigma = 0: the sample is the data prediction
            return x0
        ab_prev = float(self.s.alpha_bars[t_prev].double())
        h = self._lam(t_prev) - self._lam(t)
        d = x0
        if self.prev is not None:
            x0_last, h_last = self.prev
            r = h_last / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_last
        self.prev = (x0, h)
        sigma_ratio = math.sqrt((1 - ab_prev) / (1 - float(ab.double())))
        return sigma_ratio * x - math.sqrt(ab_prev) * math.expm1(-h) * d


Sampler = PaperSampler | DDIMSampler | DPMSolverSampler  # one step per entry of `timesteps`


def make_sampler(name: str, schedule: VarianceSchedule, steps: int = 50, stabilizer: bool = True,
                 eta: float = 0.0, solver: str = "ddim") -> Sampler:
    """'paper' -> the official 500-step sampler; 'fast' -> `steps` steps of DDIM or DPM-Solver++(2M) ("dpm")."""
    if name == "paper":
        return PaperSampler(schedule, stabilizer=stabilizer)
    if name == "fast" and solver == "dpm":
        return DPMSolverSampler(schedule, steps=steps)
    if name == "fast":
        return DDIMSampler(schedule, steps=steps, eta=eta, stabilizer=stabilizer)
    raise ValueError(f"unknown sampler {name!r}: use 'paper' or 'fast'")
