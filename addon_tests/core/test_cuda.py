"""The CUDA path on a machine with an NVIDIA GPU (skipped where there is none, as on CI): the network agrees with
the CPU, the worker generates on the GPU, and a mixed-precision training step learns."""
import copy
import sys

import numpy as np
import pytest
import torch

from addon_tests.paths import ROOT
from model_core.checkpoint import load_checkpoint
from model_core.network import ModelConfig, PoseDiffusion
from model_core.client import WorkerClient
from model_core.protocol import read_result
from model_core.settings import resolve_checkpoint
from training.train import LossModule, optimizer_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a CUDA build of torch")
SPEECH = ROOT / "examples" / "speech.wav"


def test_denoiser_and_audio_encoder_on_gpu_match_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = load_checkpoint(resolve_checkpoint("default")).model.eval()
    gen = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 36267, generator=gen)
    x = torch.randn(2, 34, model.cfg.pose_dim, generator=gen)
    pre = torch.zeros(2, 34, model.cfg.pose_dim + 1)
    beta = model.schedule.betas[torch.tensor([100, 400])]
    with torch.inference_mode():
        cpu = model.denoise(x, beta, model.context(audio, pre))
        gpu_model = copy.deepcopy(model).cuda()
        gpu = gpu_model.denoise(x.cuda(), beta.cuda(), gpu_model.context(audio.cuda(), pre.cuda())).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-4), (cpu - gpu).abs().max()


def test_worker_generates_on_the_gpu(tmp_path):
    client = WorkerClient(sys.executable, core_parent=ROOT)
    try:
        ready = client.start()
        assert ready["cuda"] is True and "NVIDIA" in ready["device_name"]
        result = client.generate(SPEECH, tmp_path / "g.npz", device="cuda",
                                 settings={"variations": 2, "seed": 1}).wait(300)
    finally:
        client.shutdown()
    data = read_result(tmp_path / "g.npz")
    assert data["meta"]["device"].startswith("cuda") and data["meta"]["precision"] == "fp32"
    assert data["poses"].shape == (2, result["frames"], 27) and np.isfinite(data["poses"]).all()
    assert not np.allclose(data["poses"][0], data["poses"][1]), "variations differ"


def test_mixed_precision_training_step_learns_on_the_gpu():
    torch.manual_seed(0)
    model = PoseDiffusion(ModelConfig(pose_dim=27, hidden_dim=64, block_depth=2, n_heads=4)).cuda()
    loss_fn = LossModule(model, 0.1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
    gen = torch.Generator("cuda").manual_seed(0)
    x0 = 0.3 * torch.randn(16, 34, 27, device="cuda")
    audio = 0.1 * torch.randn(16, 36267, device="cuda")
    losses = [optimizer_step(loss_fn, opt, x0, audio, gen, 10.0, amp=True) for _ in range(60)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
