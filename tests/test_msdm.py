"""Issue 21: MSDM, the waveform baseline. EDM's closed forms, the samplers' guarantees (Dirac stems sum to the mixture,
imputation keeps the given stems), bad inputs refused with a message, and the CLI round trip in the tiny preset."""
import contextlib
import io
import json
import math

import pytest
import torch
import torch.nn as nn

import msg_edu.cli as cli
from msg_edu.audio import load_audio, save_audio
from msg_edu.core import MsgEduError
from msg_edu.edm import EDMConfig, edm_precond, edm_sample, edm_weight, karras_sigmas, sample_sigmas
from msg_edu.msdm import MSDM, MSDMTraining, additivity_errors, msdm_separate
from msg_edu.waveunet import WaveUNet, WaveUNetConfig, msdm_loss

SR = 16000


class GaussianStems(nn.Module):
    "The exact denoiser of independent Gaussian stems: D_k(x; sigma) = s_k^2 / (s_k^2 + sigma^2) x_k."
    def __init__(self, std):
        super().__init__()
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.config = WaveUNetConfig(n_stems=len(self.std), channels=(8,), factors=(), attention_levels=0, norm_groups=8)

    def forward(self, x, sigma):
        v = self.std[None, :, None] ** 2
        return v / (v + torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1) ** 2) * x


STD = torch.tensor([0.3, 0.2, 0.1, 0.05])


def run(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main([str(a) for a in argv])
    return status, err.getvalue()


def test_edm_preconditioning_closed_forms():
    sd = 0.2
    sigma = torch.logspace(-4, 1, 40, dtype=torch.float64).float()
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sd)
    torch.testing.assert_close(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2))
    torch.testing.assert_close(c_out, sigma * sd / torch.sqrt(sigma ** 2 + sd ** 2))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma ** 2 + sd ** 2))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    torch.testing.assert_close(edm_weight(sigma, sd) * c_out ** 2, torch.ones_like(sigma))
    # F's effective target (x - c_skip x_sigma) / c_out has unit variance for data of std sigma_data
    torch.testing.assert_close(((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2, torch.ones_like(sigma))
    assert float(edm_precond(torch.tensor(sd), sd)[0]) == pytest.approx(0.5)


def test_training_sigmas_are_lognormal_and_untrained_loss_is_one():
    s = sample_sigmas(40000, -3.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert float(s.log().mean()) == pytest.approx(-3.0, abs=0.02)
    assert float(s.log().std()) == pytest.approx(1.0, abs=0.02)
    g = torch.Generator().manual_seed(1)
    x = 0.2 * torch.randn(128, 4, 256, generator=g)              # data of std sigma_data; F = 0 at init
    with torch.no_grad(): loss = float(msdm_loss(WaveUNet(WaveUNetConfig.preset("tiny")), {"stems": x}, EDMConfig(), generator=g))
    assert loss == pytest.approx(1.0, abs=0.04)


def test_karras_sigmas_match_the_formula():
    n, lo, hi, rho = 12, 1e-4, 1.0, 7.0
    s = karras_sigmas(n, lo, hi, rho)
    assert s.shape == (n + 1,) and float(s[-1]) == 0.0
    i = torch.arange(n, dtype=torch.float64)
    expect = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    torch.testing.assert_close(s[:-1].double(), expect, rtol=1e-5, atol=1e-9)
    assert torch.equal(EDMConfig(steps=n).sigmas(), s)


def test_dirac_stems_sum_exactly_to_the_mixture():
    g = torch.Generator().manual_seed(0)
    truth = STD[None, :, None] * torch.randn(3, 4, 1500, generator=g)
    mix = truth.sum(1, keepdim=True)
    for model in (GaussianStems(STD), WaveUNet(WaveUNetConfig.preset("tiny"))):
        est = msdm_separate(model, mix, EDMConfig(steps=8, s_churn=2.0, resamples=2), generator=g)
        assert est.shape == truth.shape
        torch.testing.assert_close(est.sum(1, keepdim=True), mix, atol=1e-5, rtol=0)
    for k in (0, 2):                                          # the constraint on another stem: still exact, same stem order
        est = msdm_separate(GaussianStems(STD), mix, EDMConfig(steps=30, dirac_stem=k), generator=g)
        torch.testing.assert_close(est.sum(1, keepdim=True), mix, atol=1e-5, rtol=0)
        gains = (est * mix).sum(-1).sum(0) / (mix ** 2).sum()
        assert gains.argsort(descending=True).tolist() == [0, 1, 2, 3], gains
    with pytest.raises(MsgEduError, match="dirac_stem"): msdm_separate(GaussianStems(STD), mix, EDMConfig(dirac_stem=4))
    gauss = msdm_separate(GaussianStems(STD), mix, EDMConfig(steps=30), constraint="gaussian", generator=g)
    assert torch.isfinite(gauss).all() and float((gauss.sum(1, keepdim=True) - mix).abs().max()) < 0.05   # pulled close


def test_dirac_posterior_near_wiener():
    g = torch.Generator().manual_seed(0)
    mix = (STD[None, :, None] * torch.randn(1, 4, 2000, generator=g)).sum(1, keepdim=True)
    est = msdm_separate(GaussianStems(STD), mix.expand(16, 1, -1), EDMConfig(steps=100, s_churn=20.0), generator=g)
    gains = (est * mix).sum(-1).mean(0) / (mix ** 2).sum()
    torch.testing.assert_close(gains, STD ** 2 / (STD ** 2).sum(), atol=0.15, rtol=0)
    assert gains.argsort(descending=True).tolist() == [0, 1, 2, 3]


def test_sampler_recovers_gaussian_stems_and_inpainting_keeps_given():
    g = torch.Generator().manual_seed(0)
    model, sig = GaussianStems(STD), EDMConfig(steps=25).sigmas()
    out = edm_sample(model, torch.randn(6, 4, 3000, generator=g), sig, s_churn=5.0, generator=g)
    torch.testing.assert_close(out.std((0, 2)), STD, atol=0.01, rtol=0)
    given = STD[None, :, None] * torch.randn(6, 4, 3000, generator=g)
    mask = torch.tensor([False, True, False, True])
    out = edm_sample(model, torch.randn(6, 4, 3000, generator=g), sig, known=given, known_mask=mask, generator=g)
    assert torch.equal(out[:, mask], given[:, mask])


def test_unet_shapes_presets_and_paper_size():
    unet = WaveUNet(WaveUNetConfig.preset("tiny"))
    x = 0.2 * torch.randn(2, 4, 777)
    assert unet(x, torch.tensor([0.01, 1.0])).shape == x.shape
    with torch.device("meta"):
        n = sum(p.numel() for p in WaveUNet(WaveUNetConfig.preset("slakh")).parameters())
    assert 395e6 < n < 415e6                                          # MSDM: ~405M
    r = MSDMTraining.preset("slakh")
    assert r.sr == 22050 and round(r.segment_seconds * r.sr) == 262144 and r.segment_seconds * r.sr % r.unet.multiple == 0
    assert (r.edm.p_mean, r.edm.p_std, r.unet.sigma_data, r.edm.rho, r.edm.steps, r.edm.s_churn, r.edm.resamples) == (-3.0, 1.0, 0.2, 7.0, 150, 20.0, 2)


def test_bad_inputs_refused_with_a_message():
    unet, edm = WaveUNet(WaveUNetConfig.preset("tiny")), EDMConfig.preset("tiny")
    cases = [
        (lambda: edm_precond(torch.tensor([0.1, -1.0])), "> 0"),
        (lambda: karras_sigmas(0), "steps"),
        (lambda: karras_sigmas(5, 1.0, 0.1), "above sigma_min"),
        (lambda: unet(torch.randn(1, 3, 100), 0.1), "stems"),
        (lambda: msdm_separate(unet, torch.randn(1, 2, 100), edm), "(B, 1, N)"),
        (lambda: msdm_separate(unet, torch.randn(1, 1, 100), edm, constraint="hard"), "dirac"),
        (lambda: msdm_separate(unet, torch.full((1, 1, 100), float("nan")), edm), "NaN"),
        (lambda: edm_sample(unet, torch.randn(1, 4, 100), edm.sigmas(), known=torch.zeros(1, 4, 100)), "both"),
        (lambda: EDMConfig(resamples=0), "resamples"),
        (lambda: WaveUNetConfig(channels=(16, 32), factors=()), "factors"),
        (lambda: MSDMTraining.preset("tiny", stems=("bass", "drums")), "stems"),
        (lambda: MSDM(unet, edm, ("bass", "drums", "guitar", "kazoo-9")), "kazoo"),
        (lambda: additivity_errors(torch.randn(1, 1, 1000)), "at least 2"),
    ]
    for fn, words in cases:
        with pytest.raises((MsgEduError, ValueError)) as e: fn()
        assert words.lower() in str(e.value).lower(), (words, str(e.value))
    pipe = MSDM(unet, edm, sr=SR, segment_seconds=0.256)
    with pytest.raises(MsgEduError, match="silent"): pipe.separate(torch.zeros(SR))
    with pytest.raises(MsgEduError, match="one to generate"): pipe.arrange(torch.randn(1, 4, 4000), torch.ones(4, dtype=torch.bool))
    with pytest.raises(MsgEduError, match="steps"): pipe.generate(1, 0.5, steps=0)


def test_additivity_waveform_exact_latent_not():
    from msg_edu.vae import AutoencoderKL, VAEConfig
    g = torch.Generator().manual_seed(0)
    stems = 0.1 * torch.randn(2, 4, SR, generator=g)
    err = additivity_errors(stems, AutoencoderKL(VAEConfig.preset("tiny")))
    assert err["waveform"]["of_mix"] == 0.0
    assert err["log-mel"]["of_mix"] > 0.5 and err["VAE latent"]["of_mix"] > 0.1


def test_cli_round_trip_train_separate_generate(toy, cache, tmp_path):
    out = tmp_path / "msdm"
    status, err = run("train", "msdm", "--preset", "tiny", "--data", toy, "--out", out, "--steps", "3", "--cache", cache)
    assert status == 0, err
    model = out / "model"
    assert json.loads((model / "msdm.json").read_text())["format"] == "msg_edu.msdm/1"
    song = tmp_path / "song.wav"
    pipe = MSDM.from_pretrained(model)
    save_audio(song, 0.1 * torch.randn(2, int(0.6 * 44100)), 44100)          # stereo, 44.1 kHz: downmixed, resampled
    status, err = run("separate", song, "--model", model, "--out", tmp_path / "sep", "--steps", "3")
    assert status == 0, err
    files = {p.name: load_audio(p)[0][0] for p in (tmp_path / "sep" / "song").iterdir()}
    assert sorted(files) == ["bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav"]
    torch.testing.assert_close(sum(files[f"{s}.wav"] for s in pipe.stems), files["mix.wav"], atol=1e-5, rtol=0)
    status, err = run("separate", song, "--model", model, "--out", tmp_path / "sep2", "--steps", "3", "--constraint", "gaussian")
    assert status == 0, err
    status, err = run("generate", "--model", model, "--n", "2", "--seconds", "0.5", "--out", tmp_path / "gen", "--steps", "2")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["gen_000", "gen_001"]
    status, err = run("separate", song, "--model", model, "--out", tmp_path / "sep3", "--sampler", "ddim")
    assert status == 2 and "--sampler" in err and len(err.strip().splitlines()) == 1
    status, err = run("separate", song, "--model", out, "--out", tmp_path / "sep4")
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_edm_and_the_unet_load_without_the_pipeline_and_old_paths_still_work():
    import importlib, subprocess, sys
    code = ("import sys, msg_edu.waveunet; print(sorted(m for m in ('msg_edu.msdm', 'msg_edu.latent', 'msg_edu.data', "
            "'msg_edu.learner') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    import msg_edu.msdm as old
    assert sum(map(len, old._MOVED.values())) == 15
    for module, names in old._MOVED.items():
        for name in names: assert getattr(old, name) is getattr(importlib.import_module(f"msg_edu.{module}"), name), name
    from msg_edu.msdm import EDMConfig as old_cfg, WaveUNet as old_unet   # the old `from` form
    assert old_cfg is EDMConfig and old_unet is WaveUNet
