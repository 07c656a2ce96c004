"""The diffusion core against closed forms: schedules, targets, q_sample, patterns, CFG, and every sampler and
conditioning method with the exact denoiser for Gaussian data (its answers are known analytically)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from msg_edu.core import seed_everything
from msg_edu.diffusion import (PREDICTIONS, convert_prediction, diffusion_loss, make_schedule, masked_mse, q_sample,
                               sample_timesteps, to_x0_eps, training_target)
from msg_edu.guidance import Cond, Denoiser, drop_cond, guided
from msg_edu.samplers import DiffusionConfig, ddim_sample, ddpm_sample, dpmpp_2m_sample, get_sampler, repaint_path
from msg_edu.toys import GaussianDenoiser, ToyDenoiser, toy_gaussian, toy_stems

LINEAR, COSINE = make_schedule("linear"), make_schedule("cosine")


MEAN, COV = toy_gaussian()
KNOWN_MASK = torch.tensor([True, False, False])
KNOWN = torch.tensor([[2.0, -1.0], [0.0, 0.0], [0.0, 0.0]])


# ---------------------------------------------------------------- schedules
def test_linear_schedule_is_ldm_alphas_cumprod_on_the_grid():
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)                          # LDM's register_schedule
    k = np.arange(1000)
    np.testing.assert_allclose(LINEAR.alpha_bar(torch.tensor((k + 1) / 1000)).numpy(), alphas_cumprod, rtol=1e-12)
    assert float(LINEAR.alpha_bar(0.0)) == 1.0 and float(LINEAR.sigma(0.0)) == 0.0
    # between grid points log alpha_bar is interpolated linearly
    mid = LINEAR.alpha_bar(torch.tensor(10.5 / 1000, dtype=torch.float64))
    np.testing.assert_allclose(float(mid), math.sqrt(alphas_cumprod[9] * alphas_cumprod[10]), rtol=1e-12)


def test_cosine_schedule_closed_form_and_log_snr_inverse():
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    a, s = COSINE.alpha_sigma(t)
    torch.testing.assert_close(a[:-1], torch.cos(math.pi * t[:-1] / 2))
    torch.testing.assert_close(s, torch.sin(math.pi * t / 2))
    assert float(a[-1]) == 0.0
    for sch in (LINEAR, COSINE):
        a, s = sch.alpha_sigma(t)
        torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(t))
        assert (sch.log_snr(t[1:-1]).diff() < 0).all()
        inner = t[5:-5]
        torch.testing.assert_close(sch.t_from_log_snr(sch.log_snr(inner)), inner, atol=1e-9, rtol=0)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("sch", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_timestep_grids_run_from_noise_to_data(sch, spacing):
    grid = sch.timesteps(17, spacing)
    assert grid.shape == (18,) and grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all()
    if spacing == "logsnr":   # evenly spaced in log-SNR between the first and last interior points
        lam = sch.log_snr(grid[1:-1])
        torch.testing.assert_close(lam.diff(), torch.full_like(lam.diff(), float(lam.diff().mean())), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- targets, q_sample, loss
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["linear", "cosine"]))
def test_targets_convert_exactly(seed, name):
    sch = make_schedule(name)
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(8, 3, 5, dtype=torch.float64, generator=g), torch.randn(8, 3, 5, dtype=torch.float64, generator=g)
    t = (0.01 + 0.97 * torch.rand(8, 3, generator=g)).double()
    xt = q_sample(x0, t, eps, sch)
    a, s = (v[..., None] for v in sch.alpha_sigma(t))
    torch.testing.assert_close(training_target(x0, eps, t, sch, "v"), a * eps - s * x0)   # MGE-LDM's sign
    for p in PREDICTIONS:
        pred = training_target(x0, eps, t, sch, p)
        x0_hat, eps_hat = to_x0_eps(pred, xt, t, sch, p)
        torch.testing.assert_close(x0_hat, x0); torch.testing.assert_close(eps_hat, eps)
        for q in PREDICTIONS:
            torch.testing.assert_close(convert_prediction(pred, xt, t, sch, p, q), training_target(x0, eps, t, sch, q))


def test_q_sample_marginals_per_track():
    x0 = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [-1.0, 2.0]]]).expand(40000, 3, 2)
    times = torch.tensor([0.0, 0.3, 0.8])
    for sch in (LINEAR, COSINE):
        xt = q_sample(x0, times.expand(40000, 3), None, sch, generator=torch.Generator().manual_seed(0))
        a, s = sch.alpha_sigma(times)
        se = 4 / math.sqrt(40000)
        assert ((xt.mean(0) - a.float()[:, None] * x0[0]).abs() <= se * s.float()[:, None] + 1e-6).all()
        var = xt.var(0)
        assert torch.equal(xt[:, 0], x0[:, 0])                        # t = 0: untouched
        torch.testing.assert_close(var[1:], (s.float() ** 2)[1:, None].expand(2, 2), rtol=0.03, atol=0)


def test_masked_mse_only_counts_noisy_tracks():
    pred, target = torch.randn(6, 3, 4, requires_grad=True), torch.randn(6, 3, 4)
    t = torch.tensor([[0.5, 0.0, 0.2], [0.0, 0.0, 0.9]]).repeat(3, 1)
    loss = masked_mse(pred, target, t)
    noisy = (t > 0)[..., None].expand_as(pred)
    torch.testing.assert_close(loss, ((pred - target) ** 2)[noisy].mean())
    loss.backward()
    assert (pred.grad[~noisy] == 0).all() and (pred.grad[noisy] != 0).all()
    all_known = masked_mse(pred, target, torch.zeros(6, 3))
    assert float(all_known.detach()) == 0.0 and all_known.requires_grad


def test_diffusion_loss_is_masked_mse_of_the_models_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    t = torch.tensor([[0.3, 0.0, 0.7]]).expand(5, 3)
    model = Denoiser(lambda x, t, c: 0.5 * x, "v")
    xt = COSINE.alpha(t)[..., None].float() * x0 + COSINE.sigma(t)[..., None].float() * noise
    expected = masked_mse(0.5 * xt, training_target(x0, noise, t, COSINE, "v"), t)
    torch.testing.assert_close(diffusion_loss(model, x0, t, COSINE, None, noise=noise), expected)


# ---------------------------------------------------------------- timestep patterns and conditions
def test_mge_pattern_frequencies_and_ranges():
    t = sample_timesteps(60000, 3, "mge", t_min=0.02, p_known=0.75, generator=torch.Generator().manual_seed(0))
    obs = t == 0
    freqs = [float((~obs).all(1).float().mean())] + [float(obs[:, i].float().mean()) for i in range(3)]
    np.testing.assert_allclose(freqs, 0.25, atol=0.01)   # (t,t,t), (0,t,t), (t,0,t), (t,t,0)
    assert (obs.sum(1) <= 1).all() and t[~obs].min() >= 0.02 and t.max() <= 1
    noisy_t = torch.where(obs, torch.nan, t)
    rows = noisy_t.nan_to_num(-1).amax(1)
    assert torch.allclose(torch.where(obs, rows[:, None], t), rows[:, None].expand(-1, 3))  # noisy tracks share t


def test_shared_and_subset_patterns():
    g = torch.Generator().manual_seed(1)
    shared = sample_timesteps(1000, 4, "shared", t_min=0.001, generator=g)
    assert (shared == shared[:, :1]).all() and shared.min() >= 0.001
    sub = sample_timesteps(40000, 4, "subset", p_known=0.5, generator=g)
    n_obs = (sub == 0).sum(1)
    assert (n_obs < 4).all()
    np.testing.assert_allclose(float((n_obs > 0).float().mean()), 0.5, atol=0.01)
    np.testing.assert_allclose([float((n_obs == k).float().mean()) for k in (1, 2, 3)], 0.5 / 3, atol=0.01)
    a = sample_timesteps(7, 3, "subset", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_timesteps(7, 3, "subset", generator=torch.Generator().manual_seed(5)))


def test_drop_cond_rates_per_sample_and_per_track():
    cond = Cond(mix=torch.ones(20000, 1, 3), labels=torch.ones(20000, 4, 2))
    out = drop_cond(cond, p_mix=0.1, p_labels=0.4, generator=torch.Generator().manual_seed(0))
    mix_dropped, lab_dropped = (out.mix == 0).all(-1).all(-1), (out.labels == 0).all(-1)
    assert ((out.mix == 0).all((1, 2)) | (out.mix == 1).all((1, 2))).all()      # whole samples
    np.testing.assert_allclose(float(mix_dropped.float().mean()), 0.1, atol=0.01)
    np.testing.assert_allclose(float(lab_dropped.float().mean()), 0.4, atol=0.01)
    assert drop_cond(None, 0.5) is None
    assert torch.equal(drop_cond(cond, 0.0, 0.0).mix, cond.mix)


def test_guided_is_the_cfg_blend_in_one_batched_call():
    calls = []
    def fn(x, t, cond):
        calls.append(len(x))
        mix = cond.mix if cond is not None else torch.zeros(len(x), 1, 2)
        return torch.tanh(x) * (1 + mix) + t[..., None]
    model = Denoiser(fn, "eps")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(6, 3, 2, generator=g), 0.05 + 0.9 * torch.rand(6, 3, generator=g)
    cond = Cond(mix=torch.randn(6, 1, 2, generator=g))
    c, u = fn(x, t, cond), fn(x, t, cond.null())
    calls.clear()
    for w in (0.0, 1.0, 2.0, -0.5):
        torch.testing.assert_close(guided(model, w)(x, t, cond), u + w * (c - u))
    assert calls == [6, 6, 12, 12]
    torch.testing.assert_close(guided(model, 2.0, batch=False)(x, t, cond), u + 2 * (c - u))
    torch.testing.assert_close(guided(model, 3.0)(x, t, None), fn(x, t, None))
    g2 = guided(model, 1.5)
    assert g2.prediction == "eps"
    # guidance commutes with converting eps -> v: the blend is affine with weights summing to one
    as_v = Denoiser(lambda x, t, c: convert_prediction(fn(x, t, c), x, t, COSINE, "eps", "v"), "v")
    torch.testing.assert_close(guided(as_v, 1.5)(x, t, cond), convert_prediction(g2(x, t, cond), x, t, COSINE, "eps", "v"),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the exact Gaussian denoiser
def test_gaussian_denoiser_matches_scalar_formula_and_conditional():
    mean, var = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([0.3, 1.0, 2.5])
    den = GaussianDenoiser(mean, torch.diag(var), COSINE)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, 3, 1, generator=g), torch.rand(16, 3, generator=g)
    a, s = (v.float()[..., None] for v in COSINE.alpha_sigma(t))
    lam = var[:, None]
    scalar = mean + lam * a / (a ** 2 * lam + s ** 2) * (x - a * mean)      # E[x0 | x_t] for one Gaussian number
    torch.testing.assert_close(den(x, t), scalar, rtol=1e-4, atol=1e-5)
    full = GaussianDenoiser(MEAN, COV, COSINE)
    m_cond, _ = full.conditional(KNOWN_MASK, KNOWN)
    x_in = torch.cat([KNOWN[:1], torch.randn(2, 2, generator=g)])[None]
    out = full(x_in, torch.tensor([[0.0, 1.0, 1.0]]))
    torch.testing.assert_close(out[0, 1:].flatten().double(), m_cond, rtol=0, atol=1e-5)
    assert torch.equal(out[0, 0], KNOWN[0])


# ---------------------------------------------------------------- samplers recover the data distribution
SAMPLER_CASES = [("cosine", "v", ddim_sample, 50, {}, 8000), ("cosine", "v", dpmpp_2m_sample, 20, {}, 8000),
                 ("cosine", "v", ddpm_sample, 1000, {}, 8000), ("linear", "eps", ddim_sample, 200, dict(eta=1.0), 8000),
                 ("linear", "eps", dpmpp_2m_sample, 20, dict(spacing="logsnr"), 8000),
                 ("cosine", "x0", ddim_sample, 50, {}, 8000)]


@pytest.mark.parametrize("sched,pred,fn,steps,kw,n", SAMPLER_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2].__name__}-{c[3]}" for c in SAMPLER_CASES])
def test_sampler_reproduces_gaussian_mean_and_std(sched, pred, fn, steps, kw, n):
    sch = make_schedule(sched)
    g = torch.Generator().manual_seed(1)
    x = fn(GaussianDenoiser(MEAN, COV, sch, pred), torch.randn(n, 3, 2, generator=g), sch, steps, generator=g, **kw)
    xf = x.reshape(n, -1).double()
    assert ((xf.mean(0) - MEAN.flatten()).abs() / MEAN.flatten().abs()).max() < 0.05
    assert (xf.std(0) / COV.diag().sqrt() - 1).abs().max() < 0.05


def test_ddim_eta1_is_ddpm_and_eta0_is_deterministic():
    den = GaussianDenoiser(MEAN, COV, COSINE, "v")
    xT = torch.randn(32, 3, 2, generator=torch.Generator().manual_seed(0))
    a = ddpm_sample(den, xT, COSINE, 40, generator=torch.Generator().manual_seed(7))
    b = ddim_sample(den, xT, COSINE, 40, eta=1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c1 = ddim_sample(den, xT, COSINE, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c1, ddim_sample(den, xT, COSINE, 40, generator=torch.Generator().manual_seed(2)))
    assert not torch.equal(a, ddpm_sample(den, xT, COSINE, 40, generator=torch.Generator().manual_seed(8)))


def test_dpm_solver_20_beats_ddim_100_and_is_second_order():
    den = GaussianDenoiser(MEAN, COV, COSINE, "v")
    dpm = {n: den.w2(*den.exact_output(dpmpp_2m_sample, n, spacing="logsnr")) for n in (20, 40)}
    ddim = {n: den.w2(*den.exact_output(ddim_sample, n)) for n in (100, 200)}
    assert dpm[20] < ddim[100]
    assert dpm[40] < dpm[20] / 3            # second order: ~4x less error per halving of the step
    assert ddim[200] > ddim[100] / 2.5      # first order: ~2x


# ---------------------------------------------------------------- conditioning on known tracks
def conditional_errors(x, den, mask=KNOWN_MASK, known=KNOWN):
    m_true, c_true = den.conditional(mask, known)
    u = x[:, ~mask].reshape(len(x), -1).double()
    m, c = u.mean(0), torch.cov(u.T)
    return float((m - m_true).norm() / m_true.norm()), float((c - c_true).norm() / c_true.norm())


@pytest.mark.parametrize("fn,steps", [(ddim_sample, 100), (dpmpp_2m_sample, 20), (ddpm_sample, 200)])
def test_tdpaint_matches_the_analytic_conditional(fn, steps):
    den = GaussianDenoiser(MEAN, COV, COSINE, "v")
    n = 8000
    g = torch.Generator().manual_seed(2)
    x = fn(den, torch.randn(n, 3, 2, generator=g), COSINE, steps, known=KNOWN.expand(n, 3, 2), known_mask=KNOWN_MASK,
           generator=g)
    assert torch.equal(x[:, 0], KNOWN[0].expand(n, 2))
    err_mean, err_cov = conditional_errors(x, den)
    assert err_mean < 0.05 and err_cov < 0.05, (err_mean, err_cov)


def test_tdpaint_exact_for_deterministic_sampler():
    "TD-Paint + DPM-Solver++ is affine in x_T: its conditional output is known exactly (discretisation error only)."
    den = GaussianDenoiser(MEAN, COV, LINEAR, "eps")
    m_true, c_true = den.conditional(KNOWN_MASK, KNOWN)
    mean, cov = den.exact_output(dpmpp_2m_sample, 50, known=KNOWN[None], known_mask=KNOWN_MASK, spacing="logsnr")
    torch.testing.assert_close(mean[:2], KNOWN[0].double())
    assert float(cov[:2].abs().max()) == 0                         # the observed track does not vary at all
    assert float((mean[2:] - m_true).norm() / m_true.norm()) < 0.01
    assert float((cov[2:, 2:] - c_true).norm() / c_true.norm()) < 0.02


def test_replacement_needs_resampling_to_match_the_conditional():
    den = GaussianDenoiser(MEAN, COV, COSINE, "v")
    n = 8000
    errs = {}
    for name, kw in [("plain", {}), ("repaint", dict(jump_length=10, jump_n_sample=10))]:
        g = torch.Generator().manual_seed(3)
        x = ddpm_sample(den, torch.randn(n, 3, 2, generator=g), COSINE, 250, known=KNOWN.expand(n, 3, 2),
                        known_mask=KNOWN_MASK, conditioning="replace", generator=g, **kw)
        assert torch.equal(x[:, 0], KNOWN[0].expand(n, 2))
        errs[name] = conditional_errors(x, den)
    assert errs["plain"][0] > 0.10                                   # replacement alone stays near the prior
    assert max(errs["repaint"]) < 0.05, errs                          # RePaint's 250 steps, j = 10, r = 10


def test_per_sample_known_masks():
    "Half the batch observes track 0, the other half track 2: each half matches its own conditional."
    den = GaussianDenoiser(MEAN, COV, COSINE, "v")
    n = 4000
    mask = torch.zeros(2 * n, 3, dtype=torch.bool)
    mask[:n, 0], mask[n:, 2] = True, True
    known = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-2.5, 0.0]]).expand(2 * n, 3, 2)
    g = torch.Generator().manual_seed(4)
    x = dpmpp_2m_sample(den, torch.randn(2 * n, 3, 2, generator=g), COSINE, 25, known=known, known_mask=mask)
    for half, m in ((x[:n], mask[0]), (x[n:], mask[-1])):
        err_mean, err_cov = conditional_errors(half, den, m, known[0])
        assert err_mean < 0.05 and err_cov < 0.08, (m, err_mean, err_cov)


def test_trailing_latent_dims_and_callback():
    "Latent-shaped tracks (B, S, C, T, F): per-track t broadcasts; the callback sees every step."
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 2, 2, 1, generator=g)
    L = torch.randn(8, 8, generator=g) * 0.4
    den = GaussianDenoiser(mean, L @ L.T + 0.5 * torch.eye(8), COSINE, "v")
    seen = []
    x = ddim_sample(den, torch.randn(6000, 2, 2, 2, 1, generator=g), COSINE, 30, callback=lambda d: seen.append(d["t"]))
    assert x.shape == (6000, 2, 2, 2, 1) and len(seen) == 30 and seen[0] == 1.0 and seen == sorted(seen, reverse=True)
    assert (x.mean(0) - mean).abs().max() < 0.1


def test_repaint_path_matches_repaints_jump_schedule():
    assert repaint_path(6, 2, 2) == [6, 5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    p = repaint_path(250, 10, 10)
    assert p[0] == 250 and p[-1] == 0 and all(abs(a - b) == 1 for a, b in zip(p, p[1:]))
    n_down = sum(b < a for a, b in zip(p, p[1:]))
    assert n_down == 250 + 9 * 10 * len(range(0, 240, 10))


# ---------------------------------------------------------------- a trained toy model separates
def test_toy_denoiser_learns_to_separate_with_guidance():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model, sch = ToyDenoiser(hidden=64, depth=2), LINEAR
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    for _ in range(400):
        x0 = toy_stems(256, generator=g)
        cond = drop_cond(Cond(mix=x0.sum(1, keepdim=True)), p_mix=0.2, generator=g)
        loss = diffusion_loss(model, x0, sample_timesteps(256, 2, "shared", t_min=0.001, generator=g), sch, cond, generator=g)
        opt.zero_grad(); loss.backward(); opt.step()
    test = toy_stems(1000, generator=g)
    mix = Cond(mix=test.sum(1, keepdim=True))
    xT = torch.randn(1000, 2, 1, generator=g)
    with torch.no_grad():
        err = {w: float(((ddim_sample(guided(model, w), xT, sch, 30, cond=mix) - test) ** 2).mean().sqrt()) for w in (0, 1, 2)}
        x, t = torch.randn(4, 2, 1), torch.rand(4, 2)
        torch.testing.assert_close(model(x, t, None), model(x, t, Cond(mix=torch.zeros(4, 1, 1))))  # None == zeroed mix
    assert err[1] < 0.5 * err[0] and err[2] < 0.5 * err[0], err


# ---------------------------------------------------------------- presets
def test_presets_follow_the_papers_and_the_prototype():
    slakh = DiffusionConfig.preset("slakh")
    assert (slakh.schedule, slakh.prediction, slakh.sampler, slakh.steps, slakh.eta) == ("linear", "eps", "ddim", 200, 1.0)
    assert slakh.p_drop_mix == 0.1 and slakh.conditioning == "replace"
    assert DiffusionConfig.preset("tiny").prediction == DiffusionConfig.preset("toy").prediction == "v"
    assert DiffusionConfig.from_dict(slakh.to_dict()) == slakh
    cfg = DiffusionConfig.preset("tiny", schedule="cosine", t_pattern="mge", t_min=0.02)
    model = ToyDenoiser(n_tracks=3, hidden=16, depth=1, mix_cond=False)
    x0 = toy_stems(8).repeat(1, 2, 1)[:, :3]
    loss = cfg.training_loss(model, x0, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = cfg.sample(model, torch.randn(8, 3, 1), known=x0, known_mask=torch.tensor([True, False, False]))
    assert torch.equal(out[:, 0], x0[:, 0])
    with pytest.raises(ValueError, match="predicts 'v' but this config trains 'eps'"):
        DiffusionConfig.preset("slakh").training_loss(model, x0)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_say_what_to_do():
    den = GaussianDenoiser(MEAN, COV, COSINE)
    x = torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match=r"must have shape \(B, S\) = \(4, 3\)"): q_sample(x, torch.rand(4), None, COSINE)
    with pytest.raises(ValueError, match=r"must have shape \(B, S\)"): diffusion_loss(den, x, torch.rand(4, 2), COSINE)
    with pytest.raises(TypeError, match="one timestep per track"): q_sample(x, 0.5, None, COSINE)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"): masked_mse(x, x, torch.full((4, 3), -0.1))
    with pytest.raises(ValueError, match="NaN"): q_sample(x, torch.full((4, 3), float("nan")), None, COSINE)
    for fn in (ddpm_sample, ddim_sample, dpmpp_2m_sample):
        with pytest.raises(ValueError, match="`steps` must be >= 1"): fn(den, x, COSINE, 0)
        with pytest.raises(ValueError, match=r"known_mask` must have shape \(B, S\) = \(4, 3\) or \(S,\) = \(3,\)"):
            fn(den, x, COSINE, 5, known=x, known_mask=torch.tensor([True, False]))
        with pytest.raises(ValueError, match="known_mask"): fn(den, x, COSINE, 5, known=x, known_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"): ddim_sample(den, x, COSINE, 5, known=x, known_mask=torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="pass both"): ddim_sample(den, x, COSINE, 5, known_mask=torch.tensor([True, False, False]))
    with pytest.raises(ValueError, match="shape of x_T"): ddim_sample(den, x, COSINE, 5, known=x[:, :2], known_mask=torch.tensor([True, False, False]))
    for w in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite number"): guided(den, w)
    with pytest.raises(ValueError, match="guidance_w must be finite"): DiffusionConfig(guidance_w=float("nan"))
    with pytest.raises(ValueError, match="unknown schedule"): make_schedule("quadratic")
    with pytest.raises(ValueError, match="unknown prediction target"): Denoiser(lambda x, t, c: x, "score")
    with pytest.raises(ValueError, match="prediction='score' is not one of"): DiffusionConfig(prediction="score")
    with pytest.raises(ValueError, match="schedule='sigmoid' is not one of"): DiffusionConfig(schedule="sigmoid")
    with pytest.raises(ValueError, match="unknown sampler"): get_sampler("euler")
    with pytest.raises(ValueError, match="unknown timestep pattern"): sample_timesteps(4, 3, "random")
    with pytest.raises(ValueError, match="unknown conditioning"): ddim_sample(den, x, COSINE, 5, conditioning="inpaint")
    with pytest.raises(ValueError, match="unknown spacing"): ddim_sample(den, x, COSINE, 5, spacing="karras")
    with pytest.raises(ValueError, match="eta"): ddim_sample(den, x, COSINE, 5, eta=-1.0)
    with pytest.raises(AttributeError, match="no `prediction` attribute"): ddim_sample(lambda x, t, c: x, x, COSINE, 5)
    with pytest.raises(ValueError, match="cannot start where alpha = 0"): ddim_sample(GaussianDenoiser(MEAN, COV, COSINE, "eps"), x, COSINE, 5)
    with pytest.raises(ValueError, match="belong to conditioning='replace'"): ddim_sample(den, x, COSINE, 5, jump_length=2, jump_n_sample=2)
    with pytest.raises(ValueError, match="shaped like x_t"): ddim_sample(Denoiser(lambda x, t, c: x[:, :2], "x0"), x, COSINE, 5)
    with pytest.raises(ValueError, match="NaN"): ddim_sample(den, torch.full((4, 3, 2), float("nan")), COSINE, 5)
    with pytest.raises(ValueError, match="probability"): drop_cond(Cond(mix=torch.ones(2, 1, 1)), p_mix=1.5)
    with pytest.raises(ValueError, match="batch size"): Cond(mix=torch.ones(2, 1, 1), labels=torch.ones(3, 2, 4))
    with pytest.raises(TypeError, match="Cond"): guided(den, 2.0)(x, torch.rand(4, 3), {"mix": x})


def test_timesteps_are_uniform_clamped_at_t_min():
    t = sample_timesteps(50000, 2, "shared", t_min=0.02, generator=torch.Generator().manual_seed(3))[:, 0]
    assert t.min() == 0.02 and t.max() <= 1
    np.testing.assert_allclose(float((t == 0.02).float().mean()), 0.02, atol=0.003)   # the clamp's mass at t_min
    np.testing.assert_allclose(float(t[t > 0.02].mean()), 0.51, atol=0.01)            # U[0.02, 1] above it


def test_ddim_with_t_end_is_mge_ldms_sampler():
    "DDIM (eta 0) on the grid linspace(1, 0.02, steps), returning the last x0 estimate: MGE-LDM's sample loop, line by line."
    seed_everything(0)
    model = ToyDenoiser(n_tracks=2, dim=3, prediction="v")
    x_T = torch.randn(4, 2, 3)
    steps = 7
    ours = get_sampler("ddim")(model, x_T, COSINE, steps, t_end=0.02)
    t = torch.linspace(1, 0.02, steps)
    alpha, sigma = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
    x = x_T.clone()
    with torch.no_grad():
        for i in range(steps):
            v = model(x, torch.full((4, 2), float(t[i])))
            pred, eps = x * alpha[i] - v * sigma[i], x * sigma[i] + v * alpha[i]
            if i < steps - 1: x = pred * alpha[i + 1] + eps * sigma[i + 1]
    torch.testing.assert_close(ours, pred, rtol=1e-4, atol=1e-5)
    grid = COSINE.timesteps(steps, t_end=0.02)
    assert len(grid) == steps + 1 and float(grid[-2]) == pytest.approx(0.02) and float(grid[-1]) == 0
    with pytest.raises(ValueError, match="t_end must be in"): COSINE.timesteps(steps, t_end=1.0)


def test_diffusion_loads_no_later_chapter_and_old_paths_still_work():
    import importlib, subprocess, sys
    code = ("import sys, msg_edu.diffusion; print(sorted(m for m in ('msg_edu.guidance', 'msg_edu.samplers', 'msg_edu.toys') "
            "if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    import msg_edu.diffusion as old
    assert {"Cond", "guided", "ddim_sample", "SAMPLERS", "DiffusionConfig", "ToyDenoiser"} <= set(old._MOVED)
    for name, module in old._MOVED.items():
        assert getattr(old, name) is getattr(importlib.import_module(f"msg_edu.{module}"), name), name
    from msg_edu.diffusion import Cond, DiffusionConfig   # the old `from` form goes through the same table
    assert DiffusionConfig is importlib.import_module("msg_edu.samplers").DiffusionConfig
    assert Cond is importlib.import_module("msg_edu.guidance").Cond
    with pytest.raises(AttributeError, match="no attribute 'nope'"): old.nope
