"""Conformance with the official implementation: every array of both fixtures (addon_tests/FIXTURES.md says
what each is and which FACTS.md section it checks; the files are in ../shared/reference).

The fixtures were made by the official code on one AMD CPU. Float results of the same code differ in the last bits
between CPUs (oneDNN and the vectorised math library pick kernels by instruction set, which changes the order of
float32 accumulation), so values computed by a network are compared within float32 rounding bounds stated per
array, relative to the array's scale. What does not depend on the CPU stays exact: arrays read from the checkpoint,
the random draws (order and values), and single reverse steps given recorded inputs (IEEE arithmetic only).
On the fixtures' own CPU every difference is 0.0 (README: bit-exact on the same CPU, within rounding across CPUs).
"""
import numpy as np
import pytest
import torch

from model_core.network import linear_schedule
from model_core.pipeline import denoise, sample_window
from model_core.samplers import PaperSampler
from model_core.settings import GenerationSettings, preset

# Bounds, as a fraction of the reference array's largest magnitude (float32 epsilon is 1.2e-7):
# - one network pass (audio encoder: 4 convolutions, 240-term sums; denoiser: 4 transformer blocks): different
#   accumulation orders move results by a few epsilon per operation; measured 7e-7 / 2.4 on an Intel Xeon.
NETWORK_PASS = 1e-5
# - the sampled trajectory: those differences enter x at every step and are carried forward (the random-weight
#   fixture networks amplify them: the trajectory grows to |x| ~ 130). Tight while few steps have run, loose at the
#   end: measured 3.6e-4 / 133 = 2.7e-6 at x_0 on an Intel Xeon.
EARLY_TRAJECTORY = 1e-5  # x_400, x_399: 100 steps in
FULL_TRAJECTORY = 1e-4  # x_10 .. x_0: 500 steps in
# - the schedule built from scratch: exp(cumsum(log alpha)) in float32, as the official code computes it; the
#   vectorised log/exp differ by an ulp between instruction sets (measured 6e-8). Absolute: the values are <= 1.
SCHEDULE_ATOL = 2.5e-7
#   sigmas_inflex = sqrt((1 - abar_{t-1}) / (1 - abar_t) * beta_t) subtracts abar from 1 where abar is within 1e-3
#   of 1, so an ulp of abar (2^-24 below 1) is a large part of 1 - abar there: allow ABAR_ULPS ulps of abar through
#   that cancellation (d sigma / sigma = (d(1 - abar_{t-1}) / (1 - abar_{t-1}) + d(1 - abar_t) / (1 - abar_t)) / 2).
#   Measured on an Intel Xeon against the AMD fixture: 6.3e-7 at t = 4 (0.012), where this allows 5.6e-6.
ABAR_ULPS = 4


def t(a):
    return torch.from_numpy(np.asarray(a))


def assert_close_to_scale(actual, expected, bound: float, what: str) -> None:
    """|actual - expected| <= bound * max|expected| everywhere."""
    scale = float(np.abs(expected).max())
    err = float(np.abs(np.asarray(actual) - expected).max())
    assert err <= bound * scale, f"{what}: max difference {err:.3g} exceeds {bound:g} x scale {scale:.3g}"


def test_audio_features_both_batchnorm_modes(official):
    ckpt, ref = official
    bn = ckpt.model.audio_encoder.feat_extractor[1]
    running = bn.running_mean.clone()
    with torch.inference_mode():
        assert_close_to_scale(ckpt.model.audio_encoder(t(ref["audio"])).numpy(), ref["audio_feat"], NETWORK_PASS,
                              "audio features (eval BatchNorm)")
        assert_close_to_scale(ckpt.model.audio_encoder(t(ref["audio"]), batch_stats=True).numpy(),
                              ref["audio_feat_trainbn"], NETWORK_PASS, "audio features (official BatchNorm)")
    assert torch.equal(running, bn.running_mean), "the official BatchNorm mode must not update the running stats"


def test_denoiser_outputs(official):
    ckpt, ref = official
    m = ckpt.model
    d = ref["x_t250"].shape[-1]
    with torch.inference_mode():
        ctx = m.context(t(ref["audio"]), t(ref["pre_seq"]))
        # the seed poses and indicator are copied into the context: exact; the audio part is a network pass
        np.testing.assert_array_equal(ctx.numpy()[..., :d + 1], ref["context"][..., :d + 1])
        assert_close_to_scale(ctx.numpy(), ref["context"], NETWORK_PASS, "context")
        np.testing.assert_array_equal(m.null_context(1).numpy(), ref["null_context"])  # a stored parameter
        ctx = t(ref["context"])  # the recorded context isolates the denoiser from the audio encoder
        beta = t(ref["beta250"])
        assert_close_to_scale(m.denoise(t(ref["x_t250"]), beta, ctx).numpy(), ref["e_theta_cond_t250"],
                              NETWORK_PASS, "conditional noise prediction")
        assert_close_to_scale(m.denoise(t(ref["x_t250"]), beta, m.null_context(1)).numpy(),
                              ref["e_theta_uncond_t250"], NETWORK_PASS, "unconditional noise prediction")
        guided = m.guided_eps(t(ref["x_t250"]), beta, ctx, m.null_context(1), 1.15)
        assert_close_to_scale(guided.numpy(), ref["e_theta_cfg_t250"], NETWORK_PASS, "guided noise prediction")


def test_schedule_buffers_loaded_and_built(official):
    ckpt, ref = official
    built = linear_schedule(500, 1e-4, 0.02)
    for name in ("betas", "alphas", "alpha_bars", "sigmas_flex", "sigmas_inflex"):
        # read from the checkpoint: no arithmetic, so exact on any CPU
        np.testing.assert_array_equal(getattr(ckpt.model.schedule, name).numpy(), ref[name])
        atol = SCHEDULE_ATOL
        if name == "sigmas_inflex":
            gap = np.maximum(1 - ref["alpha_bars"].astype(np.float64), 1e-30)  # 1 - abar_t; t = 0 is padding
            cancel = 0.5 * ABAR_ULPS * 2.0 ** -24 * (1 / gap[:-1] + 1 / gap[1:])
            atol = SCHEDULE_ATOL + np.concatenate([[0.0], ref[name][1:] * cancel])
        np.testing.assert_array_less(np.abs(built[name].numpy() - ref[name]), atol + 1e-30, err_msg=name)


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


def test_noise_stream_reproduces_the_fixture_exactly(official):
    """With a zero network the sampler's output is sigma_t z: x_T and every recorded draw must match exactly."""
    ckpt, ref = official
    s = PaperSampler(ckpt.model.schedule)
    gen = torch.Generator().manual_seed(int(ref["sample_seed"]))
    x_T = torch.randn(ref["traj_t500"].shape, generator=gen)  # what sample_window draws first
    np.testing.assert_array_equal(x_T.numpy(), ref["traj_t500"])
    zeros = torch.zeros_like(x_T)
    sched = ckpt.model.schedule
    for i, step_t in enumerate(s.timesteps):
        noise = s.step(zeros, i, zeros, gen)
        if step_t == 400:
            np.testing.assert_array_equal(noise.numpy(), (sched.sigmas_inflex[400] * t(ref["step_t400_z"])).numpy())
        if step_t == 10:
            np.testing.assert_array_equal(noise.numpy(), (sched.sigmas_inflex[10] * t(ref["step_t10_z"])).numpy())


TRAJECTORY = {400: ("traj_t400", EARLY_TRAJECTORY), 399: ("traj_t399", EARLY_TRAJECTORY),
              10: ("traj_t10", FULL_TRAJECTORY), 9: ("traj_t9", FULL_TRAJECTORY), 1: ("traj_t1", FULL_TRAJECTORY)}


def run_paper_sample(ckpt, ref, bn_mode: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The seeded paper sample of the fixture: {t: x_t} at the recorded states, and x_0."""
    settings = preset("paper", bn_mode=bn_mode, seed=int(ref["sample_seed"]))
    gen = torch.Generator().manual_seed(settings.seed)
    states = {}
    with torch.inference_mode():
        context = ckpt.model.context(t(ref["audio"]), t(ref["pre_seq"]), batch_stats=bn_mode == "official")
        for step_t, x in denoise(ckpt.model, context, settings, gen, gen):
            states[step_t - 1] = x.numpy().copy()  # the step at t yields x_{t-1}
    return states, states[0]


def test_full_seeded_sample_follows_the_official_trajectory(official):
    """Eval BatchNorm: the recorded states x_400 .. x_1 and x_0, tight early and within rounding growth at the end."""
    ckpt, ref = official
    states, x0 = run_paper_sample(ckpt, ref, "eval")
    for step_t, (key, bound) in TRAJECTORY.items():
        assert_close_to_scale(states[step_t], ref[key], bound, key)
    assert_close_to_scale(x0, ref["sample_x0"], FULL_TRAJECTORY, "sample_x0")


def test_full_seeded_sample_official_batchnorm(official):
    ckpt, ref = official
    _, x0 = run_paper_sample(ckpt, ref, "official")
    assert_close_to_scale(x0, ref["sample_x0_trainbn"], FULL_TRAJECTORY, "sample_x0_trainbn")


@pytest.mark.parametrize("settings", [preset("paper", seed=5),
                                      GenerationSettings(sampler="fast", steps=10, seed=5, precision="fp32"),
                                      GenerationSettings(sampler="fast", steps=10, seed=5, precision="bf16")],
                         ids=["paper-exact", "fast-fp32", "fast-bf16"])
def test_same_seed_twice_gives_identical_arrays(official, settings):
    """Determinism on one machine: the same seed gives the same bits, whatever the precision."""
    ckpt, ref = official
    outs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(settings.seed)
        outs.append(sample_window(ckpt.model, t(ref["audio"]), t(ref["pre_seq"]), settings, gen, gen).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


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
    """The fp32 path (weights packed by MKL) follows the exact one to float rounding, all 500 steps."""
    ckpt, ref = official
    out = {}
    for precision in ("exact", "fp32"):
        settings = preset("paper", bn_mode="eval", seed=int(ref["sample_seed"]), precision=precision)
        gen = torch.Generator().manual_seed(settings.seed)
        out[precision] = sample_window(ckpt.model, t(ref["audio"]), t(ref["pre_seq"]), settings, gen, gen).numpy()
    assert_close_to_scale(out["exact"], ref["sample_x0"], FULL_TRAJECTORY, "exact sample")
    assert_close_to_scale(out["fp32"], out["exact"], FULL_TRAJECTORY, "prepacked fp32 against exact")


def test_prepared_denoisers_follow_weight_changes(ted_small):
    """MKL packs the Linears once per row count and weights, bf16 casts them once per weights; everything else is the
    model's own parameters."""
    from model_core.precision import Bf16Linear, MklPackedLinear, mkl_packing, prepared_denoiser
    model = ted_small.model
    x, beta, ctx = torch.randn(2, 34, 27), torch.full((2,), 0.01), torch.randn(2, 34, 60)
    with torch.inference_mode():
        first = prepared_denoiser(model, "fp32", 68)
        assert prepared_denoiser(model, "fp32", 68) is first, "cached while the weights stay the same"
        assert prepared_denoiser(model, "exact", 68) is model.diffusion_net.net, "exact runs the model's own"
        if mkl_packing():  # every x86 build of torch
            assert isinstance(first.blocks[0].attn.qkv, MklPackedLinear) and first.blocks[0].attn.qkv.rows == 68
            assert first.pos_embedding is model.diffusion_net.net.pos_embedding, "shared, not copied"
        torch.testing.assert_close(first(x, beta, ctx), model.denoise(x, beta, ctx), atol=1e-5, rtol=1e-4)
        one = prepared_denoiser(model, "fp32", 34)
        assert one is not first and prepared_denoiser(model, "fp32", 68) is first, "one packing per row count"
        torch.testing.assert_close(one(x[:1], beta[:1], ctx[:1]), model.denoise(x[:1], beta[:1], ctx[:1]),
                                   atol=1e-5, rtol=1e-4)
        bf16 = prepared_denoiser(model, "bf16", 68)  # a third copy: the one used longest ago (34) is dropped
        assert prepared_denoiser(model, "fp32", 68) is first and prepared_denoiser(model, "fp32", 34) is not one, \
            "at most 2 kept"
        assert isinstance(bf16.blocks[0].mlp.fc1, Bf16Linear) and bf16.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the same products as autocast's own casts, bit for bit
            assert torch.equal(prepared_denoiser(model, "bf16", 4)(x, beta, ctx), model.denoise(x, beta, ctx))
    saved = model.diffusion_net.net.out[2].bias.detach().clone()
    try:
        with torch.no_grad():
            model.diffusion_net.net.out[2].bias.add_(1.0)
        with torch.inference_mode():
            torch.testing.assert_close(prepared_denoiser(model, "fp32", 68)(x, beta, ctx),
                                       model.denoise(x, beta, ctx), atol=1e-5, rtol=1e-4)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(prepared_denoiser(model, "bf16", 68)(x, beta, ctx), model.denoise(x, beta, ctx))
    finally:
        with torch.no_grad():
            model.diffusion_net.net.out[2].bias.copy_(saved)
