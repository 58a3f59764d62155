"""training/: procedural data, clip format, trainer (loss, resume, torchrun DDP), metrics."""
from __future__ import annotations

import csv
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from addon_tests.paths import ROOT
from model_core.checkpoint import CheckpointError, load_checkpoint
from model_core.network import ModelConfig, PoseDiffusion
from model_core.skeleton import TED_EXPRESSIVE, TED_GESTURE, from_directions, to_directions
from training import data, metrics, procedural
from training.evaluate import pause_frames
from training.train import (TRAIN_DEFAULTS, LossModule, Speed, Trainer, compile_model, draw_steps, load_config,
                            loader_workers, make_adam, native_bf16, optimizer_step, recalibrate_batchnorm,
                            resolve_speed)

TINY_CONFIG = """
[model]
pose_dim = 27
hidden_dim = 32
block_depth = 2
n_heads = 4
[data]
skeleton = "ted_gesture"
train = "{train}"
motion_filters = false
min_words = 0
workers = 0
[train]
batch_size = 8
epochs = 100
lr = 1e-3
out = "{out}"
export_every_epochs = 0
save_every_minutes = 0
compile = {compile}
adam = "{adam}"
amp = {amp}
log_every = {log_every}
threads = 1
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("proc") / "ted_gesture"
    procedural.build(root, "ted_gesture", n_clips=3, seed=7, duration=8.0)
    return str(root)


def _config(tmp_path, train: str, name: str, compile: str = "false", adam: str = "auto", amp: str = "true",
            log_every: int = 0) -> str:
    """A tiny run's config. Compiling costs a minute on a 2-core CPU, so only the tests of the speed options do."""
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY_CONFIG.format(train=train, out=tmp_path / name, compile=compile, adam=adam, amp=amp,
                                       log_every=log_every))
    return str(path)


# ---- procedural data -------------------------------------------------------------------------------------------

def test_procedural_is_deterministic_and_speech_driven(tiny_data, tmp_path):
    again = procedural.build(tmp_path / "again", "ted_gesture", n_clips=3, seed=7, duration=8.0, jobs=2)
    assert again["sha256"] == data.read_index(tiny_data)["sha256"]
    other = procedural.build(tmp_path / "other", "ted_gesture", n_clips=1, seed=8, duration=8.0)
    assert other["sha256"] != again["sha256"]
    ds = data.WindowDataset(tiny_data, motion_filters=False, min_words=0)
    poses, audio = np.asarray(ds.poses), np.asarray(ds.audio) / 32767
    speech_vel, silence_vel = [], []
    for c in ds.index["clips"]:
        p = poses[c["frame_offset"]: c["frame_offset"] + c["n_frames"]]
        a = audio[c["sample_offset"]: c["sample_offset"] + c["n_samples"]]
        speaking = procedural.voiced_frames(a, len(p))
        pause = pause_frames(speaking)  # the gesture measure's: retraction and preparation are not rest
        arm_vel = np.r_[np.abs(np.diff(p[:, 9:], axis=0)).sum(axis=1), 0.0]
        speech_vel.append(arm_vel[speaking].mean())
        silence_vel.append(arm_vel[pause].mean())
        assert 0.2 < speaking.mean() < 0.95 and pause.sum() > 10  # both speech and pauses
    assert np.mean(speech_vel) > 10 * np.mean(silence_vel)
    dirs = to_directions(poses, TED_GESTURE, normalize=False)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-5)  # valid unit bone directions


def test_procedural_expressive_fingers_curl(tmp_path):
    procedural.build(tmp_path / "e", "ted_expressive", 1, seed=3, duration=6.0)
    ds = data.WindowDataset(tmp_path / "e", motion_filters=False, min_words=0)
    dirs = to_directions(np.asarray(ds.poses), TED_EXPRESSIVE)
    finger = TED_EXPRESSIVE.bone_index("left_index2")
    assert np.ptp(dirs[:, finger], axis=0).max() > 0.3  # the distal index bone moves with the curl control


# ---- format and windowing (the LMDB converter: test_ted_lmdb.py) ---------------------------------------------

def test_windowing_follows_the_paper(tiny_data):
    ds = data.WindowDataset(tiny_data, motion_filters=False, min_words=0)
    expected = sum((c["n_frames"] - 42) // 10 + 1 for c in ds.index["clips"])
    assert len(ds) == expected
    poses, audio = ds[1]
    assert poses.shape == (34, 27) and audio.shape == (36267,) and audio.dtype == torch.float32
    c = ds.index["clips"][0]
    assert tuple(ds.windows[1]) == (0, 10, math.floor(10 / c["n_frames"] * c["n_samples"]))
    assert len(data.WindowDataset(tiny_data)) > 0  # speech windows pass the word and motion filters
    short = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(data.fixed_length_audio(short, 8), [0, 1, 2, 3, 4, 4, 3, 2])  # mirrored end
    ramp = np.arange(60, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    half = data.resample_poses(ramp, duration=2.0)  # 60 frames over 2 s -> 30 frames at 15 fps
    np.testing.assert_allclose(half[:, 0, 0], np.arange(0, 60, 2))


def test_filters_drop_static_and_wordless_windows(tmp_path):
    rng = np.random.default_rng(0)
    moving = np.zeros((100, 27), np.float32)
    moving[:, 9:] = 0.3 * np.sin(np.arange(100) / 3)[:, None] * rng.standard_normal(18)  # arms only
    words = [("w", t, t + 0.2) for t in np.arange(0, 6.6, 0.25)]
    clips = [data.Clip("moving", moving, np.zeros(106667, np.float32), words),
             data.Clip("static", np.zeros((100, 27), np.float32), np.zeros(106667, np.float32), words),
             data.Clip("silent", moving, np.zeros(106667, np.float32), [])]
    data.write_dataset(tmp_path / "d", clips, TED_GESTURE, {"kind": "test"})
    ds = data.WindowDataset(tmp_path / "d")
    assert set(ds.windows[:, 0]) == {0} and len(ds) == 6
    assert len(data.WindowDataset(tmp_path / "d", motion_filters=False)) == 12
    assert len(data.WindowDataset(tmp_path / "d", motion_filters=False, min_words=0)) == 18
    leaning = np.tile(from_directions(np.tile([[0.0, -0.5, 0.87]], (9, 1))[None], TED_GESTURE), (34, 1))
    assert not data.motion_ok(leaning + moving[:34], TED_GESTURE)  # spine 60 degrees from vertical


# ---- metrics ---------------------------------------------------------------------------------------------------

def test_fgd_self_is_zero_and_matches_closed_form():
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8))
    assert abs(metrics.fgd(feat, feat)) < 1e-6
    # diagonal Gaussians: ||mu1 - mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-9)
    # and from samples whose statistics are exactly those Gaussians' (whitened, rescaled)
    z = rng.standard_normal((1000, 5))
    z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    assert metrics.fgd(mu1 + z * np.sqrt(s1), mu2 + z * np.sqrt(s2)) == pytest.approx(closed, rel=1e-6)


def _elbow_motion(speed: np.ndarray) -> np.ndarray:
    """TED poses whose left elbow angle advances by speed[f] radians at frame f (all else the mean pose)."""
    skel = TED_GESTURE
    up = skel.mean[4] / np.linalg.norm(skel.mean[4])
    axis = np.cross(up, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    theta = 0.5 + np.cumsum(np.r_[0.0, speed[1:]])
    dirs = np.repeat(skel.mean[None] / np.linalg.norm(skel.mean, axis=-1, keepdims=True), len(speed), axis=0)
    dirs[:, 5] = np.cos(theta)[:, None] * up + np.sin(theta)[:, None] * np.cross(axis, up)
    return from_directions(dirs, skel)


def test_bc_motion_beats_and_score(monkeypatch):
    f = np.arange(34)
    speed = 0.03 * (1.5 - np.cos(2 * np.pi * (f - 10) / 10))  # slowest at frames 10, 20, 30
    poses = _elbow_motion(speed)[None]
    vel = metrics.motion_velocity(poses, TED_GESTURE)[0]
    assert metrics.motion_beats(vel, 0.03) == [10 / 15, 20 / 15, 30 / 15]
    # the velocity is the official normalised one: |d angle| / pi / change_angle / 4 for the one moving pair
    assert vel[5] == pytest.approx(speed[5] / math.pi / metrics.TED_CHANGE_ANGLE[1] / 4, rel=1e-5)
    onsets = np.array([10 / 15, 1.5])
    monkeypatch.setattr(metrics, "audio_beats", lambda audio: onsets)
    bc = metrics.BeatConsistency(TED_GESTURE)
    bc.update(poses, np.zeros((1, 36267)))
    bc.update(np.zeros_like(poses), np.zeros((1, 36267)))  # no motion beats: skipped, as the official code
    expected = (1.0 + math.exp(-((1.5 - 20 / 15) ** 2) / (2 * 0.1 ** 2))) / 2
    assert bc.value == pytest.approx(expected, rel=1e-9) and bc.count == 2


def test_bc_with_real_onsets():
    f = np.arange(34)
    poses = _elbow_motion(0.03 * (1.5 - np.cos(2 * np.pi * (f - 10) / 10)))[None]
    audio = np.zeros(36267, np.float32)
    rng = np.random.default_rng(0)
    for t in (10 / 15, 20 / 15):  # noise bursts starting at the motion beats
        i = int(t * 16000)
        audio[i:i + 1600] = 0.5 * rng.standard_normal(1600) * np.exp(-np.arange(1600) / 400)
    on = metrics.BeatConsistency(TED_GESTURE)
    on.update(poses, audio[None])
    off = metrics.BeatConsistency(TED_GESTURE)
    off.update(poses, np.roll(audio, int(0.33 * 16000))[None])  # bursts half-way between beats
    assert on.value > 0.8 and off.value < 0.1


def test_diversity_and_joint_mae():
    a, b = np.zeros((4, 3)), np.ones((4, 3))
    assert metrics.diversity([a, a]) == 0.0
    d = metrics.diversity([a, b, a, b], seed=1)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(1))
    assert d == pytest.approx(np.mean([3.0 * (i % 2 != int(p) % 2) for i, p in enumerate(perm)]))
    x = np.zeros((2, 34, 27), np.float32)
    y = x.copy()
    y[:, :4] = 1.0  # seed frames are not scored
    assert metrics.joint_mae(x, y, TED_GESTURE) == 0.0
    y[:, 4:, 24] = 0.1  # the right forearm (the last bone, its child the wrist is a leaf) moves 0.1 along x:
    wrist_shift = 0.1 * TED_GESTURE.lengths[8]  # only the wrist moves, by length * 0.1, in one of 10 x 3 values
    assert metrics.joint_mae(x, y, TED_GESTURE) == pytest.approx(wrist_shift / 30, rel=1e-5)


def test_extractor_architectures_match_the_official_ones():
    ted = metrics.FeatureExtractor(27, 32, with_mu=True)
    assert ted.features(torch.zeros(3, 34, 27)).shape == (3, 32)
    # FACTS §9: Conv-BN-LReLU k3 s1, k3 s1, k4 s2, Conv1d(64 -> 32, k3), flatten 384, Linear 256, 128, 32, fc_mu 32
    weights = {k: tuple(v.shape) for k, v in ted.state_dict().items() if k.startswith("encoder.") and v.ndim > 1}
    assert weights == {"encoder.net.0.0.weight": (32, 27, 3), "encoder.net.1.0.weight": (64, 32, 3),
                       "encoder.net.2.0.weight": (64, 64, 4), "encoder.net.3.weight": (32, 64, 3),
                       "encoder.out_net.0.weight": (256, 384), "encoder.out_net.3.weight": (128, 256),
                       "encoder.out_net.6.weight": (32, 128), "encoder.fc_mu.weight": (32, 32),
                       "encoder.fc_logvar.weight": (32, 32)}
    expr = metrics.FeatureExtractor(126, 128, with_mu=False)
    assert expr.features(torch.zeros(2, 34, 126)).shape == (2, 128)


def test_official_extractor_files_load_through_the_restricted_unpickler(tmp_path):
    """Files laid out as Trimodal's and HA2G's (argparse args, so torch's weights_only loader refuses them)."""
    import argparse
    torch.manual_seed(0)
    poses = torch.randn(5, 34, 27)
    ted = metrics.FeatureExtractor(27, 32, with_mu=True)
    gen_dict = {k.replace("encoder.", "pose_encoder.", 1): v for k, v in ted.state_dict().items()
                if k.startswith("encoder.")}
    gen_dict.update({k: v for k, v in ted.state_dict().items() if k.startswith("decoder.")})
    gen_dict["text_encoder.embedding.weight"] = torch.zeros(3, 4)  # EmbeddingNet parts FGD does not use
    torch.save({"args": argparse.Namespace(pose_dim=27), "epoch": 9, "pose_dim": 27, "gen_dict": gen_dict},
               tmp_path / "trimodal.bin")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "trimodal.bin", weights_only=True)
    np.testing.assert_array_equal(metrics.load_extractor(tmp_path / "trimodal.bin").features(poses),
                                  ted.features(poses))
    expr = metrics.FeatureExtractor(126, 64, with_mu=False)
    torch.save({"args": argparse.Namespace(), "epoch": 1, "pose_dim": 126, "latent_dim": 64,
                "motion_ae": expr.state_dict()}, tmp_path / "ha2g.bin")
    poses = torch.randn(5, 34, 126)
    np.testing.assert_array_equal(metrics.load_extractor(tmp_path / "ha2g.bin").features(poses), expr.features(poses))


def test_extractor_round_trips_and_learns(tiny_data, tmp_path):
    ds = data.WindowDataset(tiny_data, motion_filters=False, min_words=0)
    ext = metrics.train_extractor(ds, TED_GESTURE, steps=60, batch_size=8)
    metrics.save_extractor(ext, tmp_path / "ext.pt")
    again = metrics.load_extractor(tmp_path / "ext.pt")
    x = torch.stack([ds[i][0] for i in range(8)])
    np.testing.assert_array_equal(ext.features(x), again.features(x))
    with torch.no_grad():
        err = torch.nn.functional.mse_loss(ext.decoder(ext.encoder(x)), x)
    assert err < x.pow(2).mean()  # reconstructs better than predicting the mean pose


# ---- trainer ---------------------------------------------------------------------------------------------------

def _fixed_loss(model: PoseDiffusion, ds) -> float:
    """Loss over a fixed batch and a fixed grid of steps, independent of the training randomness."""
    x0 = torch.stack([ds[i][0] for i in range(16)])
    audio = torch.stack([ds[i][1] for i in range(16)])
    model.eval()
    with torch.no_grad():
        return float(np.mean([model.training_loss(x0, audio, 0.0, t=torch.full((16,), t),
                                                  generator=torch.Generator().manual_seed(t)).item()
                              for t in (5, 25, 50, 100, 200, 350, 500)]))


def test_training_lowers_the_loss(tiny_data, tmp_path):
    cfg = load_config(_config(tmp_path, tiny_data, "run"))
    trainer = Trainer(cfg, tmp_path / "run")
    before = _fixed_loss(trainer.model, trainer.data)
    trainer.run(max_steps=60)
    after = _fixed_loss(trainer.model, trainer.data)
    assert after < 0.7 * before
    with open(tmp_path / "run" / "steps.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 61))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    prov = ckpt.provenance
    assert prov["step"] == 60 and prov["data_sha256"] == data.read_index(tiny_data)["sha256"]
    assert prov["config"]["model"]["hidden_dim"] == 32 and prov["epoch"] == trainer.epoch
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k


# (adam, amp, log_every): the official step, and the speed options that run in seconds on a CPU (compile: below)
RESUME_OPTIONS = [("for-loop", "false", 1), ("fused", "true", 3), ("foreach", "true", 3)]


@pytest.mark.parametrize("adam,amp,log_every", RESUME_OPTIONS, ids=lambda v: str(v))
def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path, adam, amp, log_every):
    def config(name):
        return load_config(_config(tmp_path, tiny_data, name, adam=adam, amp=amp, log_every=log_every))

    full = Trainer(config("full"), tmp_path / "full")
    full.run(max_steps=8)
    assert full.epoch >= 2  # the run crosses epoch boundaries
    part = Trainer(config("part"), tmp_path / "part")
    part.run(max_steps=5)
    resumed = Trainer(config("part"), tmp_path / "part", resume=True)
    assert resumed.step == 5
    resumed.run(max_steps=8)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for a, b in zip(full.opt.state_dict()["state"].values(), resumed.opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    with open(tmp_path / "part" / "steps.csv") as f, open(tmp_path / "full" / "steps.csv") as g:
        assert [r["loss"] for r in csv.DictReader(f)] == [r["loss"] for r in csv.DictReader(g)]
    with open(tmp_path / "part" / "epochs.csv") as f, open(tmp_path / "full" / "epochs.csv") as g:
        assert list(csv.DictReader(f))[-1]["loss"] == list(csv.DictReader(g))[-1]["loss"]
    speed = load_checkpoint(tmp_path / "part" / "last.pt").provenance["speed"]
    bf16 = amp == "true" and native_bf16(torch.device("cpu"))
    assert speed == {"compile": False, "amp": bf16, "adam": adam, "log_every": log_every, "math_attention": bf16,
                     "threads": 1}
    assert torch.load(tmp_path / "part" / "resume.pt", weights_only=True)["speed"] == speed


def test_compact_state_resumes_a_warm_started_run_on_a_fresh_machine(tiny_data, tmp_path):
    """Warm start from a checkpoint and a compact state every 3 steps: a run stopped at step 6 whose run folder is
    then gone (a fresh machine with only the repository's copy) resumes from the compact file and ends bit for bit
    where a run that went on ends; the file holds float32 weights and bfloat16 Adam moments (~8 bytes/parameter)."""
    source = Trainer(load_config(_config(tmp_path, tiny_data, "source")), tmp_path / "source")
    source.run(max_steps=2)

    def config(name: str) -> dict:
        cfg = load_config(_config(tmp_path, tiny_data, name))
        cfg["train"].update(init_from=str(tmp_path / "source" / "last.pt"), compact_every_steps=3,
                            compact_state=str(tmp_path / "repo" / f"{name}.pt"))
        return cfg

    full = Trainer(config("full"), tmp_path / "full")
    for k, v in source.model.state_dict().items():
        assert torch.equal(full.model.state_dict()[k], v), k
    full.run(max_steps=8)
    Trainer(config("part"), tmp_path / "part").run(max_steps=6)
    shutil.rmtree(tmp_path / "part")
    resumed = Trainer(config("part"), tmp_path / "part", resume=True)
    assert resumed.step == 6
    resumed.run(max_steps=8)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for a, b in zip(full.opt.state_dict()["state"].values(), resumed.opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    with open(tmp_path / "part" / "steps.csv") as f, open(tmp_path / "full" / "steps.csv") as g:
        assert [r["loss"] for r in csv.DictReader(f)] == [r["loss"] for r in csv.DictReader(g)]
    state = torch.load(tmp_path / "repo" / "part.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}
    assert {st[k].dtype for st in state["optimizer"]["state"].values() for k in ("exp_avg", "exp_avg_sq")} == {
        torch.bfloat16}
    n_params = sum(p.numel() for p in full.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in full.model.buffers())
    assert os.path.getsize(tmp_path / "repo" / "part.pt") < 8 * n_params + buffers + 200_000
    prov = load_checkpoint(tmp_path / "part" / "last.pt").provenance
    assert prov["init_from"] == str(tmp_path / "source" / "last.pt") and prov["step"] == 8


def test_small_steps_take_their_share_of_the_draw():
    """draw_steps: every step in 1..T, and the share asked for (plus the uniform draw's own) falls in 1..small_max."""
    gen = torch.Generator().manual_seed(0)
    t = draw_steps(40_000, 500, 0.4, 60, gen)
    assert int(t.min()) >= 1 and int(t.max()) <= 500 and int(t.max()) > 400
    expected = 0.4 + 0.6 * 60 / 500
    assert abs(float((t <= 60).float().mean()) - expected) < 0.01
    assert abs(float((t <= 30).float().mean()) - expected / 2) < 0.01  # uniform inside the small range too
    assert int(draw_steps(1000, 500, 1.0, 60, gen).max()) <= 60


def test_the_export_holds_the_moving_average_and_resumes_with_it(tiny_data, tmp_path):
    """ema_decay 1 keeps the average at the warm start while the weights train: the export is the warm-start file's
    weights, with BatchNorm statistics measured for them (not the trained weights' running ones). With 0.8 (and
    small-step draws), a run stopped and resumed exports what an uninterrupted run does."""
    source = Trainer(load_config(_config(tmp_path, tiny_data, "source")), tmp_path / "source")
    source.run(max_steps=2)

    def config(name: str, decay: float) -> dict:
        cfg = load_config(_config(tmp_path, tiny_data, name))
        cfg["train"].update(init_from=str(tmp_path / "source" / "last.pt"), ema_decay=decay, small_t_share=0.5,
                            small_t_max=20)
        return cfg

    frozen = Trainer(config("frozen", 1.0), tmp_path / "frozen")
    frozen.run(max_steps=3)
    exported = load_checkpoint(tmp_path / "frozen" / "last.pt").model.state_dict()
    trained = frozen.model.state_dict()
    calibrated = load_checkpoint(tmp_path / "source" / "last.pt").model
    recalibrate_batchnorm(calibrated, frozen._calibration_audio())
    for k, v in calibrated.state_dict().items():
        assert torch.equal(exported[k], v), k
    for k, v in source.model.state_dict().items():
        stats = "running" in k or "num_batches" in k
        assert torch.equal(exported[k], v) != stats, k  # the weights are the source's, the statistics new
    assert any(not torch.equal(trained[k], v) for k, v in source.model.state_dict().items())

    full = Trainer(config("full", 0.8), tmp_path / "full")
    full.run(max_steps=6)
    Trainer(config("part", 0.8), tmp_path / "part").run(max_steps=4)
    resumed = Trainer(config("part", 0.8), tmp_path / "part", resume=True)
    resumed.run(max_steps=6)
    a = load_checkpoint(tmp_path / "full" / "last.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "part" / "last.pt").model.state_dict()
    for k, v in a.items():
        assert torch.equal(b[k], v), k
    live = full.model.state_dict()
    assert any(not torch.equal(live[k], v) for k, v in a.items())  # the export is the average, not the weights


def test_warm_start_refuses_another_architecture_or_file(tiny_data, tmp_path):
    cfg = load_config(_config(tmp_path, tiny_data, "warm"))
    cfg["train"]["init_from"] = str(ROOT / "model_core" / "weights" / "demo_ted_gesture.pt")
    with pytest.raises(CheckpointError, match="same architecture"):
        Trainer(cfg, tmp_path / "warm")
    cfg["train"]["init_sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match="restore that file"):
        Trainer(cfg, tmp_path / "warm")


def test_the_demo_recipe_starts_from_its_pinned_file():
    """build.py train-demo reproduces the bundled model from the file the recipe names, not from the bundled file
    its exports overwrite: that file is in the repository with the pinned digest."""
    t = load_config(ROOT / "training" / "configs" / "demo.toml")["train"]
    init = ROOT / t["init_from"]
    assert init.resolve() != (ROOT / t["export_path"]).resolve()
    assert load_checkpoint(init).sha256 == t["init_sha256"]


def test_speed_options_resolve_for_the_device():
    cpu = torch.device("cpu")
    auto = resolve_speed(TRAIN_DEFAULTS, cpu)
    bf16 = native_bf16(cpu)  # what pays on a CPU: bf16 with math attention where native, nothing else
    assert auto == Speed(compile=False, amp=bf16, adam="for-loop", log_every=1, math_attention=bf16)
    assert resolve_speed({**TRAIN_DEFAULTS, "compile": True, "adam": "fused"}, cpu) == Speed(True, bf16, "fused", 1, bf16)
    assert not resolve_speed({**TRAIN_DEFAULTS, "amp": False}, cpu).amp
    explicit = resolve_speed({**TRAIN_DEFAULTS, "compile": False, "adam": "foreach", "log_every": 20}, cpu)
    assert explicit == Speed(compile=False, amp=bf16, adam="foreach", log_every=20, math_attention=bf16)
    assert auto.threads == 0, "auto: as many as the machine's load leaves"
    assert resolve_speed({**TRAIN_DEFAULTS, "threads": 3}, cpu).threads == 3
    for key, bad in [("compile", "yes"), ("adam", "lion"), ("log_every", -1), ("threads", 0), ("threads", "many"),
                     ("threads", True)]:
        with pytest.raises(ValueError, match=key):
            resolve_speed({**TRAIN_DEFAULTS, key: bad}, cpu)
    assert loader_workers("auto", cpu, 1) == 1 and loader_workers(3, cpu, 1) == 3
    with pytest.raises(ValueError, match="workers"):
        loader_workers("many", cpu, 1)
    opt = make_adam([torch.nn.Parameter(torch.zeros(2))], 1e-3, (0.5, 0.999), "for-loop")
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is False


def _one_step(speed: Speed, compiled: bool = False) -> tuple[PoseDiffusion, torch.Tensor]:
    """A tiny model after one training step with these options, from the same initial weights and batch."""
    torch.manual_seed(0)
    model = PoseDiffusion(ModelConfig(pose_dim=27, hidden_dim=32, block_depth=2, n_heads=4))
    if compiled:
        compile_model(model)
    opt = make_adam(model.parameters(), 1e-3, (0.5, 0.999), speed.adam)
    gen = torch.Generator().manual_seed(1)
    x0 = 0.3 * torch.randn(8, 34, 27, generator=gen)
    audio = 0.1 * torch.randn(8, 36267, generator=gen)
    loss = optimizer_step(LossModule(model, 0.1), opt, x0, audio, gen, 1e9, speed.amp,  # no clipping: raw grads
                          speed.math_attention)
    return model, loss


# Biases of the convolutions that feed a BatchNorm: it subtracts the batch mean, so their true gradient is zero and
# any computed one is rounding noise (relative errors are meaningless for them; they are checked to be ~0 instead).
BN_FED_BIASES = {f"audio_encoder.feat_extractor.{i}.bias" for i in (0, 3, 6)}


def _grad_errors(model: PoseDiffusion, ref: PoseDiffusion) -> tuple[float, dict[str, float]]:
    """Relative gradient error |g - g_ref| / |g_ref| (2-norms) over all parameters, and per parameter tensor."""
    per, num, den = {}, 0.0, 0.0
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (r.grad is None), name
        if r.grad is None:
            continue
        diff = float((p.grad.float() - r.grad).norm())
        num, den = num + diff ** 2, den + float(r.grad.norm()) ** 2
        if name not in BN_FED_BIASES:
            per[name] = diff / float(r.grad.norm())
    total = math.sqrt(den)
    for name in BN_FED_BIASES:
        assert float(dict(model.named_parameters())[name].grad.norm()) < 1.5e-3 * total, name  # bf16: 4e-4
    return math.sqrt(num) / total, per


EAGER = Speed(compile=False, amp=False, adam="for-loop", log_every=1)


@pytest.mark.parametrize("adam", ["fused", "foreach"])
def test_fused_and_foreach_adam_take_the_eager_step(adam):
    ref, ref_loss = _one_step(EAGER)
    model, loss = _one_step(Speed(False, False, adam, 1))
    assert torch.equal(loss, ref_loss)  # the forward and backward are the same code: identical gradients
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, r.grad), name
        # the same Adam update evaluated in another order: float32 rounding, a few ulps of |p| <= ~3 (ulp 2.4e-7)
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-6, msg=name)


def test_math_attention_takes_the_eager_step():
    """SDPA's math backend evaluates the same softmax(q k^T / sqrt(d)) v as its flash kernel, in another order:
    float32 rounding (measured: 3e-7 overall, 2e-6 per tensor), bounded at 1e-5 overall and 1e-4 per tensor."""
    ref, ref_loss = _one_step(EAGER)
    model, loss = _one_step(Speed(False, False, "for-loop", 1, math_attention=True))
    assert abs(float(loss) - float(ref_loss)) < 1e-6 * float(ref_loss)
    total, per = _grad_errors(model, ref)
    assert total < 1e-5 and max(per.values()) < 1e-4, (total, max(per.items(), key=lambda kv: kv[1]))


@pytest.mark.parametrize("math_attention", [False, True], ids=["flash", "math"])
def test_bf16_autocast_step_stays_close_to_fp32(math_attention):
    """bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2 %). Under autocast the matmuls and convolutions round
    their inputs to bf16 and accumulate in fp32. Measured on an AMD EPYC (avx512_bf16): loss 0.03 %, all gradients
    1.4 %, each denoiser tensor <= 1.0 %, each audio-encoder tensor <= 10 % (its first convolution sums over 15-tap
    windows of a raw waveform rounded to 8 bits, and BatchNorm divides by small batch deviations). The bounds are
    about 3x those, room for another CPU's kernels, far below what a wrong step gives (errors of order 100 %)."""
    ref, ref_loss = _one_step(EAGER)
    model, loss = _one_step(Speed(False, True, "for-loop", 1, math_attention))
    assert loss.dtype == torch.float32  # mse_loss runs in fp32 under autocast
    assert abs(float(loss) - float(ref_loss)) < 0.002 * float(ref_loss)
    total, per = _grad_errors(model, ref)
    assert total < 0.05
    for name, err in per.items():
        assert err < (0.3 if name.startswith("audio_encoder.") else 0.03), (name, err)


def test_compiled_step_matches_eager_and_resumes_exactly(tiny_data, tmp_path):
    """torch.compile for real (Inductor; C++ kernels on the CPU, about a minute for this tiny model on 2 cores).
    Inductor fuses and reorders fp32 reductions, so gradients move by float32 rounding amplified through the net:
    bounds 1e-4 overall and 1e-3 per tensor (measured: below 1e-5 and 1e-4 on an AMD EPYC)."""
    ref, ref_loss = _one_step(EAGER)
    model, loss = _one_step(EAGER, compiled=True)
    assert abs(float(loss) - float(ref_loss)) < 1e-5 * float(ref_loss)
    total, per = _grad_errors(model, ref)
    assert total < 1e-4 and max(per.values()) < 1e-3, (total, max(per.items(), key=lambda kv: kv[1]))

    def config(name):
        return load_config(_config(tmp_path, tiny_data, name, compile="true", adam="fused", log_every=2))

    full = Trainer(config("full"), tmp_path / "full")
    full.run(max_steps=5)
    part = Trainer(config("part"), tmp_path / "part")
    part.run(max_steps=3)
    resumed = Trainer(config("part"), tmp_path / "part", resume=True)
    resumed.run(max_steps=5)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    speed = load_checkpoint(tmp_path / "part" / "last.pt").provenance["speed"]
    assert speed["compile"] is True and "compile_fallback" not in speed
    assert list(load_checkpoint(tmp_path / "part" / "last.pt").model.state_dict()) == list(ref.state_dict())


def test_failed_compilation_falls_back_to_the_eager_step(tiny_data, tmp_path):
    """A real compiler failure: the trainer's CLI in a fresh process (no kernels compiled earlier in this one, an
    empty Inductor cache) told that the C++ compiler is a path where there is none. The run says so, goes on
    eagerly from the same state and ends exactly where an eager run ends; the provenance says why."""
    cfg = _config(tmp_path, tiny_data, "fallback", compile="true")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CXX": str(tmp_path / "no-such-c++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run([sys.executable, "-m", "training.train", "--config", cfg, "--max-steps", "3"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile failed, training without it: InductorError: InvalidCxxCompiler" in proc.stderr
    eager = Trainer(load_config(_config(tmp_path, tiny_data, "eager")), tmp_path / "eager")
    eager.run(max_steps=3)
    fallback = load_checkpoint(tmp_path / "fallback" / "last.pt")
    for k, v in eager.model.state_dict().items():
        assert torch.equal(fallback.model.state_dict()[k], v), k
    speed = fallback.provenance["speed"]
    assert speed["compile"] is False and "No working C++ compiler" in speed["compile_fallback"]


def test_torchrun_two_processes_keep_identical_weights(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun is installed with torch"
    cfg = _config(tmp_path, tiny_data, "ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "training.train", "--config", cfg,
                           "--max-steps", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prov = load_checkpoint(tmp_path / "ddp" / "last.pt").provenance
    assert prov["world_size"] == 2 and prov["step"] == 4
    sums = prov["rank_state_sha256"]
    assert len(sums) == 2 and sums[0] == sums[1]
    fresh = PoseDiffusion(ModelConfig(pose_dim=27, hidden_dim=32, block_depth=2, n_heads=4))
    trained = load_checkpoint(tmp_path / "ddp" / "last.pt").model
    assert not torch.equal(fresh.null_cond_emb, trained.null_cond_emb)  # it trained


def test_evaluate_reports_every_sampler_and_baseline(tiny_data, tmp_path):
    from training.evaluate import evaluate, markdown_table
    trainer = Trainer(load_config(_config(tmp_path, tiny_data, "ev")), tmp_path / "ev")
    trainer.run(max_steps=2)
    ds = data.WindowDataset(tiny_data, motion_filters=False, min_words=0)
    metrics.save_extractor(metrics.train_extractor(ds, TED_GESTURE, steps=5, batch_size=8), tmp_path / "ext.pt")
    result = evaluate(str(tmp_path / "ev" / "last.pt"), tiny_data, ["fast:2", "fast:3"], str(tmp_path / "ext.pt"),
                      baselines=True, batch_size=8, max_batches=2, motion_clips=2)
    rows = result["rows"]
    assert list(rows) == ["fast:2", "fast:3", "shuffled audio (fast:2)", "mean pose", "real (reference)"]
    assert rows["real (reference)"]["fgd"] == pytest.approx(0.0, abs=1e-6)
    assert rows["mean pose"]["diversity"] == 0.0 and rows["fast:2"]["fgd"] > 0
    assert "| mean pose |" in markdown_table(result)
    # the true procedural motion rests in pauses (the gesture measure; the plain voiced/unvoiced speed ratio counts
    # retraction and preparation as silence); a 2-step model's ratio is measured, whatever it is
    assert rows["real (reference)"]["gesture"]["speech_pause_ratio"] > 2.5
    assert all(rows[k]["speech_silence"] > 0 for k in ("fast:2", "fast:3", "shuffled audio (fast:2)"))
    shuffled = rows["shuffled audio (fast:2)"]
    assert shuffled["fgd"] != rows["fast:2"]["fgd"], "the baseline really generates from other windows' audio"
    assert shuffled["speech_silence"] != rows["fast:2"]["speech_silence"], "... and other clips' speech"
    assert "speech_silence" not in rows["mean pose"] and "| n/a |" in markdown_table(result)
