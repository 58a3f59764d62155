"""The fast sampler against the paper sampler, and its schedule of steps."""
import pytest
import torch

from model_core.network import VarianceSchedule, ModelConfig
from model_core.samplers import DDIMSampler, PaperSampler, add_noise, ddim_timesteps


@pytest.fixture(scope="module")
def schedule():
    return VarianceSchedule(ModelConfig())


def test_full_length_ancestral_ddim_is_the_paper_step(schedule):
    """With K = T and eta = 1, DDIM's step equals DDPM's (Song et al. 2021, §4.1), random draws included."""
    paper, ddim = PaperSampler(schedule, stabilizer=False), DDIMSampler(schedule, steps=500, eta=1.0, stabilizer=False)
    assert ddim.timesteps == paper.timesteps
    x, eps = torch.randn(2, 34, 27), torch.randn(2, 34, 27)
    for t in (500, 400, 100, 25, 10, 2, 1):
        i = paper.timesteps.index(t)
        a = paper.step(eps, i, x, torch.Generator().manual_seed(t))
        b = ddim.step(eps, i, x, torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_deterministic_ddim_inverts_an_exact_noise_prediction(schedule):
    """Given the true noise at every step, eta = 0 DDIM recovers x0 exactly from x_T, whatever K."""
    x0 = 0.3 * torch.randn(1, 34, 27)
    noise = torch.randn(1, 34, 27)
    for k in (5, 50):
        s = DDIMSampler(schedule, steps=k, eta=0.0)
        t0 = s.timesteps[0]
        x = add_noise(schedule, x0, noise, t0)
        for i, _ in enumerate(s.timesteps):
            x = s.step(noise, i, x, torch.Generator())
        torch.testing.assert_close(x, x0, atol=1e-4, rtol=1e-4)


def test_stabilizer_noise_is_shared_across_frames_below_t0(schedule):
    s = DDIMSampler(schedule, steps=500, eta=1.0, stabilizer=True)
    x, eps = torch.zeros(256, 34, 1), torch.zeros(256, 34, 1)
    i = s.timesteps.index(3)
    z = (s.step(eps, i, x, torch.Generator().manual_seed(0)) - s.step(eps, i, x, torch.Generator().manual_seed(1)))
    corr = torch.corrcoef(z[:, :, 0].T)
    off_diag = corr[~torch.eye(34, dtype=bool)].mean()
    assert abs(off_diag - (22 / 25) ** 4) < 0.08, "frames correlate with sigma_a^2 = ((t - t0)/t0)^4 at t = 3"
    i_high = s.timesteps.index(100)
    z = (s.step(eps, i_high, x, torch.Generator().manual_seed(0)) - s.step(eps, i_high, x, torch.Generator().manual_seed(1)))
    assert abs(torch.corrcoef(z[:, :, 0].T)[~torch.eye(34, dtype=bool)].mean()) < 0.08, "independent above t0"


def test_timesteps():
    assert ddim_timesteps(500, 10) == [500, 445, 389, 334, 278, 223, 167, 112, 56, 1]
    assert ddim_timesteps(500, 1) == [1]
    with pytest.raises(ValueError, match="1..500"):
        ddim_timesteps(500, 0)
