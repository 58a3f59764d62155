"""The paper's evaluation metrics (FACTS §9): FGD, BC (with the official quirks), Diversity, joint MAE.

FGD features come from the official extractors' architectures: Trimodal's EmbeddingNet pose encoder (TED Gesture,
32-d fc_mu) and HA2G's MotionAE encoder (TED Expressive). Official extractor files are read through
model_core.checkpoint.read_official (restricted unpickler, nothing executed); `train_extractor` trains the same
autoencoder on any converted dataset (python -m training.metrics DATA OUT) and saves it in a weights-only file.
"""
from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn

from model_core.checkpoint import read_official
from model_core.timing import FPS, SAMPLE_RATE
from model_core.skeleton import Skeleton, get_skeleton, to_directions, to_joints

FGD_FAILED = 1e10  # what the official evaluator reports when the Frechet distance fails
TED_CHANGE_ANGLE = (0.0034540758933871984, 0.007043459918349981, 0.003493624273687601, 0.007205077446997166)
TED_ANGLE_PAIRS = ((3, 4), (4, 5), (6, 7), (7, 8))
EXPRESSIVE_ANGLE_PAIRS = ((0, 1), (0, 2), (1, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13),
                          (14, 15), (15, 16), (17, 18), (18, 19), (17, 5), (5, 8), (8, 14), (14, 11), (2, 20),
                          (20, 21), (22, 23), (23, 24), (25, 26), (26, 27), (28, 29), (29, 30), (31, 32), (32, 33),
                          (34, 35), (35, 36), (34, 22), (22, 25), (25, 31), (31, 28), (0, 37), (37, 38), (37, 39),
                          (38, 40), (39, 41), (4, 42), (21, 43))
EXPRESSIVE_CHANGE_ANGLE = (
    0.0027804733254015446, 0.002761547453701496, 0.005953566171228886, 0.013764726929366589, 0.022748252376914024,
    0.039307352155447006, 0.03733552247285843, 0.03775784373283386, 0.0485558956861496, 0.032914578914642334,
    0.03800227493047714, 0.03757007420063019, 0.027338404208421707, 0.01640886254608631, 0.003166505601257086,
    0.0017252820543944836, 0.0018696568440645933, 0.0016072227153927088, 0.005681346170604229, 0.013287615962326527,
    0.021516695618629456, 0.033936675637960434, 0.03094293735921383, 0.03378918394446373, 0.044323261827230453,
    0.034706637263298035, 0.03369896858930588, 0.03573163226246834, 0.02628341130912304, 0.014071882702410221,
    0.0029828345868736506, 0.0015706412959843874, 0.0017107439925894141, 0.0014634154504165053, 0.004873405676335096,
    0.002998138777911663, 0.0030240598134696484, 0.0009890805231407285, 0.0012279648799449205, 0.047324635088443756,
    0.04472292214632034)
BC_SIGMA = 0.1


# ---- FGD -------------------------------------------------------------------------------------------------------

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), with the official retry and imaginary-part check."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fgd(real_feat: np.ndarray, gen_feat: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F); FGD_FAILED if it fails."""
    stats = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (np.asarray(real_feat, np.float64),
                                                                  np.asarray(gen_feat, np.float64))]
    try:
        return frechet_distance(*stats[0], *stats[1])
    except ValueError:
        return FGD_FAILED


def diversity(gen_feat_batches: list[np.ndarray], seed: int = 0) -> float:
    """Mean L1 distance between each feature row and the same row of a randomly permuted batch (official)."""
    feat1 = np.vstack(gen_feat_batches[:500])
    perm = torch.randperm(len(gen_feat_batches), generator=torch.Generator().manual_seed(seed))[:500]
    feat2 = np.vstack([gen_feat_batches[int(i)] for i in perm])
    return float(np.mean(np.sum(np.abs(feat1 - feat2), axis=-1)))


# ---- feature extractors ----------------------------------------------------------------------------------------

def _conv_norm_relu(cin: int, cout: int, downsample: bool = False) -> nn.Sequential:
    k, s = (4, 2) if downsample else (3, 1)
    return nn.Sequential(nn.Conv1d(cin, cout, k, s), nn.BatchNorm1d(cout), nn.LeakyReLU(0.2, True))


class PoseEncoder(nn.Module):
    """Trimodal / HA2G PoseEncoderConv for 34 frames; `with_mu` adds Trimodal's fc_mu / fc_logvar heads."""

    def __init__(self, pose_dim: int, latent_dim: int, with_mu: bool):
        super().__init__()
        self.net = nn.Sequential(_conv_norm_relu(pose_dim, 32), _conv_norm_relu(32, 64),
                                 _conv_norm_relu(64, 64, True), nn.Conv1d(64, 32, 3))
        # LeakyReLU(True) in the originals has slope 1.0: identity
        self.out_net = nn.Sequential(nn.Linear(384, 256), nn.BatchNorm1d(256), nn.Identity(), nn.Linear(256, 128),
                                     nn.BatchNorm1d(128), nn.Identity(), nn.Linear(128, latent_dim))
        self.with_mu = with_mu
        if with_mu:
            self.fc_mu = nn.Linear(latent_dim, latent_dim)
            self.fc_logvar = nn.Linear(latent_dim, latent_dim)

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        """poses (B, 34, D) normalised -> features (B, latent): fc_mu output (no sampling) or z."""
        z = self.out_net(self.net(poses.transpose(1, 2)).flatten(1))
        return self.fc_mu(z) if self.with_mu else z


class PoseDecoder(nn.Module):
    """Trimodal / HA2G PoseDecoderConv for 34 frames (used to train our own extractor)."""

    def __init__(self, pose_dim: int, latent_dim: int):
        super().__init__()
        self.pre_net = nn.Sequential(nn.Linear(latent_dim, 64), nn.BatchNorm1d(64), nn.Identity(), nn.Linear(64, 136))
        self.net = nn.Sequential(nn.ConvTranspose1d(4, 32, 3), nn.BatchNorm1d(32), nn.LeakyReLU(0.2, True),
                                 nn.ConvTranspose1d(32, 32, 3), nn.BatchNorm1d(32), nn.LeakyReLU(0.2, True),
                                 nn.Conv1d(32, 32, 3), nn.Conv1d(32, pose_dim, 3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.pre_net(z).view(len(z), 4, -1)).transpose(1, 2)


class FeatureExtractor(nn.Module):
    """The FGD feature network: an encoder (and the decoder it was trained with), always used in eval mode."""

    def __init__(self, pose_dim: int, latent_dim: int, with_mu: bool):
        super().__init__()
        self.encoder = PoseEncoder(pose_dim, latent_dim, with_mu)
        self.decoder = PoseDecoder(pose_dim, latent_dim)
        self.meta = {"pose_dim": pose_dim, "latent_dim": latent_dim, "with_mu": with_mu}

    @torch.inference_mode()
    def features(self, poses: torch.Tensor) -> np.ndarray:
        self.eval()
        return self.encoder(poses.float()).cpu().numpy().astype(np.float64)


def load_extractor(path: str | Path) -> FeatureExtractor:
    """An official extractor (Trimodal gen_dict or HA2G motion_ae, read safely) or one saved by save_extractor."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # official files pickle argparse objects: use the restricted unpickler
        payload = read_official(path)
    if "extractor" in payload:
        ext = FeatureExtractor(**payload["meta"])
        ext.load_state_dict(payload["extractor"])
    elif "gen_dict" in payload:  # Trimodal EmbeddingNet: keep pose_encoder.* and decoder.*
        state = {k: v for k, v in payload["gen_dict"].items() if k.startswith(("pose_encoder.", "decoder."))}
        ext = FeatureExtractor(int(payload["pose_dim"]), 32, True)
        ext.load_state_dict({k.replace("pose_encoder.", "encoder.", 1): v for k, v in state.items()})
    elif "motion_ae" in payload:
        ext = FeatureExtractor(int(payload["pose_dim"]), int(payload["latent_dim"]), False)
        ext.load_state_dict(payload["motion_ae"])
    else:
        raise ValueError(f"{path.name} is not a feature extractor (no gen_dict, motion_ae or extractor)")
    return ext.eval()


def save_extractor(ext: FeatureExtractor, path: str | Path, provenance: dict | None = None) -> None:
    torch.save({"extractor": ext.state_dict(), "meta": ext.meta, "provenance": provenance or {}}, path)


def train_extractor(dataset: torch.utils.data.Dataset, skel: Skeleton, latent_dim: int | None = None,
                    steps: int = 2000, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> FeatureExtractor:
    """Train the skeleton's official autoencoder (Trimodal for TED Gesture, HA2G for Expressive) with an MSE
    reconstruction loss on a dataset of (poses, audio) items."""
    torch.manual_seed(seed)
    trimodal = skel.name == "ted_gesture"
    ext = FeatureExtractor(skel.pose_dim, latent_dim or (32 if trimodal else 128), with_mu=trimodal)
    opt = torch.optim.Adam(ext.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))
    step = 0
    ext.train()
    while step < steps:
        for poses, _ in loader:
            loss = nn.functional.mse_loss(ext.decoder(ext.encoder(poses)), poses)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return ext.eval()


# ---- beat consistency ------------------------------------------------------------------------------------------

def motion_velocity(poses: np.ndarray, skel: Skeleton) -> np.ndarray:
    """Mean normalised angular velocity (B, T) of the official angle pairs; index 0 is 0."""
    x = np.asarray(poses, np.float64) + skel.mean.reshape(-1).astype(np.float64)
    b, t, _ = x.shape
    if skel.name == "ted_gesture":
        vec = x.reshape(b, t, -1, 3)
        vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
        pairs, change = TED_ANGLE_PAIRS, TED_CHANGE_ANGLE
    else:
        v = x.reshape(b, t, -1, 3)
        palms = np.cross(v[:, :, 11], v[:, :, 17]), np.cross(v[:, :, 28], v[:, :, 34])
        flat = np.concatenate([x, *palms], axis=-1)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)  # whole-frame quirk
        vec = flat.reshape(b, t, -1, 3)
        pairs, change = EXPRESSIVE_ANGLE_PAIRS, EXPRESSIVE_CHANGE_ANGLE
    vel = np.zeros((b, t))
    for (i, j), c in zip(pairs, change):
        angle = np.arccos(np.clip(np.sum(vec[:, :, i] * vec[:, :, j], axis=-1), -1, 1)) / math.pi
        vel[:, 1:] += np.abs(np.diff(angle, axis=1)) / c / len(pairs)
    return vel


def motion_beats(vel: np.ndarray, thres: float) -> list[float]:
    """Times (s) of frames 2..T-2 whose velocity is a local minimum with a drop of at least `thres`."""
    return [t / FPS for t in range(2, len(vel) - 1)
            if vel[t] < vel[t - 1] and vel[t] < vel[t + 1]
            and (vel[t - 1] - vel[t] >= thres or vel[t + 1] - vel[t] >= thres)]


def audio_beats(audio: np.ndarray) -> np.ndarray:
    """librosa onset times (s) of one clip with librosa's defaults, as the official evaluation."""
    import librosa
    return librosa.onset.onset_detect(y=np.asarray(audio, np.float32), sr=SAMPLE_RATE, units="time")


class BeatConsistency:
    """Accumulates the official BC: onset-count-weighted mean of per-clip Gaussian onset-to-beat scores."""

    def __init__(self, skel: Skeleton):
        self.skel = skel
        self.thres = 0.03 if skel.name == "ted_gesture" else 0.001
        self.total, self.count, self.skipped_no_onsets = 0.0, 0, 0

    def update(self, poses: np.ndarray, audio: np.ndarray) -> None:
        """poses (B, T, D) normalised generated motion, audio (B, L) the clips' 16 kHz audio."""
        for vel, clip in zip(motion_velocity(poses, self.skel), np.asarray(audio)):
            beats = motion_beats(vel, self.thres)
            if not beats:
                continue
            onsets = audio_beats(clip)
            if len(onsets) == 0:  # the official code would divide by zero here
                self.skipped_no_onsets += 1
                continue
            d2 = (onsets[:, None] - np.asarray(beats)[None]) ** 2
            score = np.exp(-d2.min(axis=1) / (2 * BC_SIGMA ** 2)).sum()
            self.total += float(score)
            self.count += len(onsets)

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


# ---- smoothness without pauses (issue 25) --------------------------------------------------------------------

HF_CUTOFF = 4.0  # Hz: strokes and holds of real gesture put little of the forearms' motion power above this
HF_SEGMENT = 32  # frames per Welch segment (2.1 s at 15 fps, bins 0.47 Hz apart; 4 Hz falls between bins 8 and 9)


def forearm_velocity_power(dirs: np.ndarray, fps: float = FPS) -> tuple[np.ndarray, np.ndarray] | None:
    """Welch power spectrum (arms, frequencies) of each forearm direction's velocity, and its frequencies (Hz).

    dirs: unit forearm directions (frames, arms, 3) sampled at `fps`. The velocity d(t+1) - d(t) times fps is a
    3-vector whose length is the angular speed (rad/s); its three components' spectra (Hann windows of HF_SEGMENT
    frames, half overlap, mean removed) are summed. None when the clip is shorter than one segment."""
    vel = np.diff(np.asarray(dirs, np.float64), axis=0) * fps
    if len(vel) < HF_SEGMENT:
        return None
    from scipy.signal import welch
    freqs, power = welch(vel, fs=fps, nperseg=HF_SEGMENT, axis=0, detrend="constant")
    return power.sum(axis=-1).T, freqs


def high_frequency_share(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Share of the power above HF_CUTOFF per row of `power` (arms) from forearm_velocity_power; NaN without motion."""
    total = power.sum(axis=-1)
    high = power[..., freqs > HF_CUTOFF].sum(axis=-1)
    return np.where(total > 1e-12, high / np.maximum(total, 1e-12), np.nan)  # NaN: an arm that does not move


def joint_mae(gen: np.ndarray, target: np.ndarray, skel: Skeleton, n_pre: int = 4) -> float:
    """Mean |joint difference| on frames n_pre.. after chaining with fixed bone lengths (no renormalisation)."""
    j_gen = to_joints(to_directions(gen, skel, normalize=False), skel)
    j_tgt = to_joints(to_directions(target, skel, normalize=False), skel)
    return float(np.mean(np.abs(j_gen[:, n_pre:] - j_tgt[:, n_pre:])))


def main(argv: list[str] | None = None) -> None:
    """python -m training.metrics DATA OUT: train an FGD feature extractor on a converted dataset."""
    from .data import WindowDataset
    p = argparse.ArgumentParser(description="Train an FGD feature extractor (the official autoencoder architecture).")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--latent", type=int, default=None, help="32 (TED, Trimodal) or 128 (Expressive, HA2G)")
    a = p.parse_args(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)  # before minutes of training, not after
    ds = WindowDataset(a.data, motion_filters=False, min_words=0)
    skel = get_skeleton(ds.index["skeleton"])
    ext = train_extractor(ds, skel, a.latent, a.steps)
    save_extractor(ext, a.out, {"data_sha256": ds.sha256, "steps": a.steps})
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
