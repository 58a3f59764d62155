"""Conformance with the official implementation: every array of both fixtures (addon_tests/FIXTURES.md says what each
is and which FACTS.md section it checks; the files are in ../shared/reference)."""
import numpy as np
import pytest
import torch

from model_core.network import linear_schedule
from model_core.pipeline import sample_window
from model_core.samplers import PaperSampler
from model_core.settings import preset


def t(a):
    return torch.from_numpy(np.asarray(a))


def test_audio_features_both_batchnorm_modes(official):
    ckpt, ref = official
    bn = ckpt.model.audio_encoder.feat_extractor[1]
    running = bn.running_mean.clone()
    with torch.inference_mode():
        np.testing.assert_array_equal(ckpt.model.audio_encoder(t(ref["audio"])).numpy(), ref["audio_feat"])
        np.testing.assert_array_equal(ckpt.model.audio_encoder(t(ref["audio"]), batch_stats=True).numpy(),
                                      ref["audio_feat_trainbn"])
    assert torch.equal(running, bn.running_mean), "the official BatchNorm mode must not update the running stats"


def test_denoiser_outputs(official):
    ckpt, ref = official
    m = ckpt.model
    with torch.inference_mode():
        ctx = m.context(t(ref["audio"]), t(ref["pre_seq"]))
        np.testing.assert_array_equal(ctx.numpy(), ref["context"])
        np.testing.assert_array_equal(m.null_context(1).numpy(), ref["null_context"])
        beta = t(ref["beta250"])
        np.testing.assert_allclose(m.denoise(t(ref["x_t250"]), beta, ctx).numpy(), ref["e_theta_cond_t250"], atol=1e-6)
        np.testing.assert_allclose(m.denoise(t(ref["x_t250"]), beta, m.null_context(1)).numpy(),
                                   ref["e_theta_uncond_t250"], atol=1e-6)
        guided = m.guided_eps(t(ref["x_t250"]), beta, ctx, m.null_context(1), 1.15)
        np.testing.assert_array_equal(guided.numpy(), ref["e_theta_cfg_t250"])


def test_schedule_buffers_loaded_and_built(official):
    ckpt, ref = official
    built = linear_schedule(500, 1e-4, 0.02)
    for name in ("betas", "alphas", "alpha_bars", "sigmas_flex", "sigmas_inflex"):
        np.testing.assert_array_equal(getattr(ckpt.model.schedule, name).numpy(), ref[name])
        np.testing.assert_array_equal(built[name].numpy(), ref[name])


def test_single_reverse_steps(official):
    ckpt, ref = official
    s = PaperSampler(ckpt.model.schedule)
    # t = 400: x_prev = c0 (x - c1 eps) + sigma z with the recorded z
    step_400 = s.timesteps.index(400)
    gen = torch.Generator()
    state = gen.get_state()
    z = torch.randn(ref["step_t400_x_t"].shape, generator=gen)
    gen.set_state(state)
    x_prev = s.step(t(ref["step_t400_e_theta_cfg"]), step_400, t(ref["step_t400_x_t"]), gen)
    expected = ref["step_t400_x_prev"] - float(ref["step_t400_sigma"]) * ref["step_t400_z"] \
        + float(ref["step_t400_sigma"]) * z.numpy()
    np.testing.assert_allclose(x_prev.numpy(), expected, rtol=1e-5, atol=1e-5)
    # t = 10 (stabilizer): the combination of the recorded shared and per-frame draws
    sa = float(ref["step_t10_sigma_a"])
    assert sa == pytest.approx(0.36)
    z10 = np.sqrt(1 - sa ** 2) * ref["step_t10_epsn_perframe"] + sa * ref["step_t10_eps0_shared"]
    np.testing.assert_allclose(z10, ref["step_t10_z"], atol=1e-6)
    step_10 = s.timesteps.index(10)
    with pytest.MonkeyPatch.context() as mp:  # the sampler's own step, given the recorded stabilizer noise
        mp.setattr("model_core.samplers.stabilized_noise", lambda *args: t(ref["step_t10_z"]))
        x9 = s.step(t(ref["step_t10_e_theta_cfg"]), step_10, t(ref["step_t10_x_t"]), torch.Generator())
    np.testing.assert_array_equal(x9.numpy(), ref["step_t10_x_prev"])


def test_stabilizer_draw_order_matches_official_stream(official):
    """At t = 10 the paper sampler draws a full z (discarded), then eps_0, then one draw per frame, in that order."""
    ckpt, ref = official
    s = PaperSampler(ckpt.model.schedule)
    d = ref["step_t10_z"].shape[-1]
    zeros = torch.zeros(1, 34, d)
    noise = s.step(zeros, s.timesteps.index(10), zeros, torch.Generator().manual_seed(3))  # x = eps = 0: sigma z
    gen = torch.Generator().manual_seed(3)
    torch.randn((1, 34, d), generator=gen)  # the discarded full draw
    eps0 = torch.randn((1, 1, d), generator=gen)
    epsn = torch.cat([torch.randn((1, 1, d), generator=gen) for _ in range(34)], 1)
    z = np.sqrt(1 - 0.36 ** 2) * epsn.numpy() + 0.36 * eps0.numpy()
    np.testing.assert_allclose(noise.numpy(), float(ckpt.model.schedule.sigmas_inflex[10]) * z, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bn_mode,key", [("eval", "sample_x0"), ("official", "sample_x0_trainbn")])
def test_full_seeded_sample_reproduces_official(official, bn_mode, key):
    ckpt, ref = official
    settings = preset("paper", bn_mode=bn_mode, seed=int(ref["sample_seed"]))
    gen = torch.Generator().manual_seed(settings.seed)
    x0 = sample_window(ckpt.model, t(ref["audio"]), t(ref["pre_seq"]), settings, gen, gen)
    np.testing.assert_allclose(x0.numpy(), ref[key], rtol=1e-4, atol=1e-4)
    assert np.abs(x0.numpy() - ref[key]).max() == 0.0, "expected a bit-exact reproduction on the CPU"


def test_stabilizer_switch_changes_the_sample(ted_small):
    ref_audio = torch.zeros(1, 36267)
    pre = torch.zeros(1, 34, 28)
    outs = []
    for stab in (True, False):
        s = preset("paper", stabilizer=stab, seed=1)
        g = torch.Generator().manual_seed(1)
        outs.append(sample_window(ted_small.model, ref_audio, pre, s, g, g).numpy())
    assert not np.allclose(outs[0], outs[1])


def test_prepacked_fp32_stays_within_rounding_of_exact(official):
    """The fast fp32 path (prepacked oneDNN weights) follows the exact one to float rounding, all 500 steps."""
    ckpt, ref = official
    out = {}
    for precision in ("exact", "fp32"):
        settings = preset("paper", bn_mode="eval", seed=int(ref["sample_seed"]), precision=precision)
        gen = torch.Generator().manual_seed(settings.seed)
        out[precision] = sample_window(ckpt.model, t(ref["audio"]), t(ref["pre_seq"]), settings, gen, gen).numpy()
    np.testing.assert_array_equal(out["exact"], ref["sample_x0"])
    scale = np.abs(ref["sample_x0"]).max()
    assert np.abs(out["fp32"] - out["exact"]).max() < 1e-4 * scale


def test_packed_denoiser_follows_weight_changes(ted_small):
    from model_core.pipeline import packed_denoiser
    model = ted_small.model
    x, beta, ctx = torch.randn(2, 34, 27), torch.full((2,), 0.01), torch.randn(2, 34, 60)
    with torch.inference_mode():
        first = packed_denoiser(model)
        assert packed_denoiser(model) is first, "cached while the weights stay the same"
        torch.testing.assert_close(first(x, beta, ctx), model.denoise(x, beta, ctx), atol=1e-5, rtol=1e-4)
    saved = model.diffusion_net.net.out[2].bias.detach().clone()
    try:
        with torch.no_grad():
            model.diffusion_net.net.out[2].bias.add_(1.0)
        with torch.inference_mode():
            torch.testing.assert_close(packed_denoiser(model)(x, beta, ctx), model.denoise(x, beta, ctx),
                                       atol=1e-5, rtol=1e-4)
    finally:
        with torch.no_grad():
            model.diffusion_net.net.out[2].bias.copy_(saved)
