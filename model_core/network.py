"""The DiffGesture network (PoseDiffusion): raw-waveform audio encoder and transformer denoiser.

Module and parameter names follow the official implementation exactly, so that official state dicts load with
strict=True (FACTS.md §1-§3, state_dict_*.txt). The noise schedule buffers live here only because the official
state dict carries them (diffusion_net.var_sched.*), with the forward noising (`add_noise`) that training and
re-roll use; the samplers that invert it are in samplers.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

AUDIO_FEAT_DIM = 32


@dataclass(frozen=True)
class ModelConfig:
    """The architecture hyper-parameters; the defaults are the paper's TED Gesture model."""

    pose_dim: int = 27
    hidden_dim: int = 256
    block_depth: int = 8
    n_poses: int = 34
    n_pre_poses: int = 4
    n_heads: int = 8
    num_steps: int = 500
    beta_1: float = 1e-4
    beta_T: float = 0.02

    def __post_init__(self):
        """Refuse configs that cannot be built or that would allocate without bound (they come from files)."""
        ints = {"pose_dim": (1, 1024), "hidden_dim": (2, 4096), "block_depth": (2, 64), "n_poses": (34, 34),
                "n_pre_poses": (1, 33), "n_heads": (1, 64), "num_steps": (1, 10000)}
        for name, (lo, hi) in ints.items():
            value = getattr(self, name)
            if type(value) is not int or not lo <= value <= hi:  # bool is not a count
                raise ValueError(f"model config: {name} must be an integer within {lo}..{hi}, not {value!r}")
        if self.hidden_dim % self.n_heads or self.hidden_dim % 2:
            raise ValueError(f"model config: hidden_dim {self.hidden_dim} must be even and divisible by n_heads "
                             f"{self.n_heads}")
        if self.block_depth % 2:
            raise ValueError(f"model config: block_depth must be even (encoder and decoder halves), not "
                             f"{self.block_depth}")
        betas = (self.beta_1, self.beta_T)
        if not all(type(b) in (int, float) for b in betas) or not 0 < self.beta_1 <= self.beta_T < 1:
            raise ValueError(f"model config: need 0 < beta_1 <= beta_T < 1, not {self.beta_1!r}, {self.beta_T!r}")

    @property
    def in_size(self) -> int:
        """Per-frame context width: seed poses + indicator bit + audio features."""
        return AUDIO_FEAT_DIM + self.pose_dim + 1

    def to_dict(self) -> dict:
        return asdict(self)


class WavEncoder(nn.Module):
    """Four strided 1-D convolutions over the raw 16 kHz waveform -> (B, 34, 32) for a 36,267-sample clip."""

    def __init__(self):
        super().__init__()
        self.feat_extractor = nn.Sequential(
            nn.Conv1d(1, 16, 15, stride=5, padding=1600), nn.BatchNorm1d(16), nn.LeakyReLU(0.3, inplace=True),
            nn.Conv1d(16, 32, 15, stride=6), nn.BatchNorm1d(32), nn.LeakyReLU(0.3, inplace=True),
            nn.Conv1d(32, 64, 15, stride=6), nn.BatchNorm1d(64), nn.LeakyReLU(0.3, inplace=True),
            nn.Conv1d(64, 32, 15, stride=6),
        )

    def forward(self, wav: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """wav (B, L) -> features (B, T, 32). batch_stats: BatchNorm normalises with this call's statistics
        (what the official test scripts do, FACTS §7) without touching the running statistics."""
        x = wav.unsqueeze(1)
        for layer in self.feat_extractor:
            if batch_stats and isinstance(layer, nn.BatchNorm1d):
                x = F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
            else:
                x = layer(x)
        return x.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with timm's ViT parameter names."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerDenoiser(nn.Module):
    """Predicts the noise of x_t from [x_t | beta, sin beta, cos beta | context] per frame (official TransformerModel)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_dim
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.n_poses, h))
        self.linear = nn.Linear(cfg.pose_dim + 3 + cfg.in_size, h)
        self.blocks = nn.ModuleList(Block(h, cfg.n_heads) for _ in range(cfg.block_depth // 2))
        self.norm = nn.LayerNorm(h)
        self.decoder_blocks = nn.ModuleList(Block(h, cfg.n_heads) for _ in range(cfg.block_depth // 2))
        self.decoder_norm = nn.LayerNorm(h)
        # The official head is Linear -> LeakyReLU(True) -> Linear; LeakyReLU(True) has slope 1.0, i.e. identity.
        self.out = nn.Sequential(nn.Linear(h, h // 2), nn.Identity(), nn.Linear(h // 2, cfg.pose_dim))

    def forward(self, x: torch.Tensor, beta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), beta (B,), context (B, N, in_size) -> predicted noise (B, N, D)."""
        beta = beta.view(-1, 1, 1)
        time_emb = torch.cat([beta, torch.sin(beta), torch.cos(beta)], dim=-1).expand(-1, x.shape[1], -1)
        h = self.linear(torch.cat([x, time_emb, context], dim=-1)) + self.pos_embedding
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        for blk in self.decoder_blocks:
            h = blk(h)
        return self.out(self.decoder_norm(h))


def guided_rows(batch: int, scale: float) -> int:
    """Rows of x the denoiser runs for a guided step of `batch` rows: the unconditional and the conditional ones, or
    only the conditional ones at guidance 1."""
    return batch if scale == 1 else 2 * batch


def linear_schedule(num_steps: int, beta_1: float, beta_T: float) -> dict[str, torch.Tensor]:
    """The official variance schedule buffers (index 0 is padding), computed in the official float32 order."""
    betas = torch.cat([torch.zeros(1), torch.linspace(beta_1, beta_T, steps=num_steps)])
    alphas = 1 - betas
    log_alphas = torch.log(alphas)
    for i in range(1, log_alphas.size(0)):  # sequential, not cumsum: bit-exact with the official buffers
        log_alphas[i] += log_alphas[i - 1]
    alpha_bars = log_alphas.exp()
    sigmas_flex = torch.sqrt(betas)
    sigmas_inflex = torch.zeros_like(sigmas_flex)
    for i in range(1, sigmas_flex.size(0)):
        sigmas_inflex[i] = ((1 - alpha_bars[i - 1]) / (1 - alpha_bars[i])) * betas[i]
    return {"betas": betas, "alphas": alphas, "alpha_bars": alpha_bars,
            "sigmas_flex": sigmas_flex, "sigmas_inflex": torch.sqrt(sigmas_inflex)}


class VarianceSchedule(nn.Module):
    """Holds the schedule as buffers so they travel with (and load from) checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_steps = cfg.num_steps
        for name, value in linear_schedule(cfg.num_steps, cfg.beta_1, cfg.beta_T).items():
            self.register_buffer(name, value)


def add_noise(schedule: VarianceSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """The forward process q(x_t | x_0) that the samplers invert: sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al.
    2020, eq. 4); t is one step for the whole batch or one per row (B,)."""
    abar = schedule.alpha_bars[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


class DiffusionNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = TransformerDenoiser(cfg)
        self.var_sched = VarianceSchedule(cfg)


class PoseDiffusion(nn.Module):
    """The whole model: audio encoder, learned null condition, denoiser and schedule buffers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.null_cond_emb = nn.Parameter(torch.zeros(1, cfg.in_size))
        self.audio_encoder = WavEncoder()
        self.diffusion_net = DiffusionNet(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: xavier-uniform Linears with zero bias, N(0,1) embeddings."""
        for m in self.diffusion_net.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.diffusion_net.net.pos_embedding)
        nn.init.normal_(self.null_cond_emb)

    @property
    def schedule(self) -> VarianceSchedule:
        return self.diffusion_net.var_sched

    def context(self, audio: torch.Tensor, pre_seq: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """Context (B, N, in_size) = [seed poses + indicator | audio features] for audio (B, L), pre_seq (B, N, D+1)."""
        feat = self.audio_encoder(audio, batch_stats=batch_stats)
        if feat.shape[1] != pre_seq.shape[1]:
            raise ValueError(f"audio of {audio.shape[-1]} samples gives {feat.shape[1]} feature frames, "
                             f"expected {pre_seq.shape[1]} (use 35,465-36,544 samples per window)")
        return torch.cat([pre_seq, feat], dim=-1)

    def null_context(self, batch: int) -> torch.Tensor:
        return self.null_cond_emb.unsqueeze(0).expand(batch, self.cfg.n_poses, -1)

    def denoise(self, x: torch.Tensor, beta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.diffusion_net.net(x, beta, context)

    def guided_eps(self, x: torch.Tensor, beta: torch.Tensor, context: torch.Tensor, null_context: torch.Tensor,
                   scale: float, net: nn.Module | None = None) -> torch.Tensor:
        """Implicit classifier-free guidance in one batch of 2B: rows [null | real], eps_u + s (eps_c - eps_u); at
        s = 1 that is eps_c, so only the B real rows are run (guided_rows).

        net: an equivalent denoiser to run instead (e.g. with prepacked weights); default the model's own."""
        b = x.shape[0]
        net = net or self.diffusion_net.net
        if guided_rows(b, scale) == b:
            return net(x, beta.expand(b), context)
        eps = net(torch.cat([x, x]), beta.expand(2 * b), torch.cat([null_context, context]))
        eps_u, eps_c = eps[:b], eps[b:]
        return eps_u + scale * (eps_c - eps_u)

    def training_loss(self, x0: torch.Tensor, audio: torch.Tensor, null_cond_prob: float = 0.1,
                      t: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The paper's objective: MSE between the true and predicted noise at a uniformly drawn step (FACTS §6)."""
        b, n, d = x0.shape
        sched = self.schedule
        pre_seq = x0.new_zeros(b, n, d + 1)
        pre_seq[:, :self.cfg.n_pre_poses, :-1] = x0[:, :self.cfg.n_pre_poses]
        pre_seq[:, :self.cfg.n_pre_poses, -1] = 1
        context = self.context(audio, pre_seq)
        if null_cond_prob > 0:
            drop = torch.rand(b, device=x0.device, generator=generator) < null_cond_prob
            context = torch.where(drop.view(b, 1, 1), self.null_context(b), context)
        if t is None:
            t = torch.randint(1, sched.num_steps + 1, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = add_noise(sched, x0, noise, t)
        return F.mse_loss(self.denoise(x_t, sched.betas[t], context), noise)
