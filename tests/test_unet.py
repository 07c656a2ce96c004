"""Multi-track U-Nets: shapes, per-track times, track equivariance, CFG's zero path, gradients, learning, bad input."""
import pytest
import torch

from msg_edu.core import seed_everything
from msg_edu.pretrained import from_pretrained, save_pretrained
from msg_edu.diffusion import diffusion_loss, make_schedule, sample_timesteps
from msg_edu.guidance import Cond, drop_cond, guided
from msg_edu.unet import LAYOUTS, MultiTrackUNet, UNetConfig


def trained_like(model, std=0.05):
    "Random weights everywhere: the zero initialisations would hide every effect (and every gradient)."
    seed_everything(0)
    for p in model.parameters(): p.data.normal_(0, std)
    return model


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("S,T,F", [(4, 8, 8), (4, 16, 4), (4, 32, 16)])
def test_output_shape_equals_input_shape(layout, S, T, F):
    m = MultiTrackUNet(UNetConfig.preset("tiny", layout=layout))
    x = torch.randn(2, S, 8, T, F)
    cond = Cond(mix=torch.randn(2, 1, 8, T, F))
    assert m(x, torch.full((2, S), 0.4), cond).shape == x.shape


@pytest.mark.parametrize("S", [1, 3, 6])
def test_track_layout_takes_any_number_of_tracks(S):
    m = MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks"))
    assert m(torch.randn(2, S, 8, 8, 8), torch.rand(2, S)).shape == (2, S, 8, 8, 8)


def test_changing_one_tracks_time_changes_that_track_most():
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks")))
    x, t = torch.randn(2, 4, 8, 16, 8), torch.tensor([[0.1, 0.4, 0.7, 0.9], [0.0, 0.5, 0.5, 0.5]])
    with torch.no_grad():
        base = m(x, t)
        for k in range(4):
            t2 = t.clone(); t2[:, k] = 1.0 - t2[:, k] * 0.5
            change = (m(x, t2) - base).abs().flatten(2).mean(-1)
            assert (change[:, k] > 0).all() and (change.argmax(1) == k).all(), (k, change)


def test_permuting_tracks_permutes_outputs():
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks", label_dim=5)))
    x, t, labels = torch.randn(2, 4, 8, 16, 8), torch.rand(2, 4), torch.randn(2, 4, 5)
    mix = torch.randn(2, 1, 8, 16, 8)
    perm = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        out = m(x, t, Cond(mix=mix, labels=labels))
        out_p = m(x[:, perm], t[:, perm], Cond(mix=mix, labels=labels[:, perm]))
    torch.testing.assert_close(out_p, out[:, perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_with_p_one_the_condition_has_no_effect(layout):
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout=layout)))
    x, t = torch.randn(2, 4, 8, 16, 8), torch.full((2, 4), 0.5)
    a, b = Cond(mix=torch.randn(2, 1, 8, 16, 8)), Cond(mix=torch.randn(2, 1, 8, 16, 8))
    with torch.no_grad():
        assert (m(x, t, a) - m(x, t, b)).abs().max() > 1e-3  # the condition matters ...
        torch.testing.assert_close(m(x, t, drop_cond(a, 1.0)), m(x, t, drop_cond(b, 1.0)))  # ... unless dropped
        torch.testing.assert_close(m(x, t, drop_cond(a, 1.0)), m(x, t, None))
        # CFG at w = 0 is the unconditional model, at w = 1 the conditional one
        torch.testing.assert_close(guided(m, 0.0)(x, t, a), m(x, t, None))
        torch.testing.assert_close(guided(m, 1.0)(x, t, a), m(x, t, a))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_reach_every_parameter(layout):
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout=layout, label_dim=4 if layout == "tracks" else 0)))
    x = torch.randn(2, 4, 8, 16, 8)
    cond = Cond(mix=torch.randn(2, 1, 8, 16, 8), labels=torch.randn(2, 4, 4) if layout == "tracks" else None)
    m(x, torch.rand(2, 1).expand(2, 4).contiguous(), cond).square().mean().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, dead


@pytest.mark.parametrize("layout", ["msgld", "tracks"])
def test_overfits_a_small_batch(layout):
    seed_everything(0)
    m = MultiTrackUNet(UNetConfig.preset("tiny", layout=layout))
    x0 = torch.randn(2, 4, 8, 16, 8) * 0.5 + torch.linspace(-1, 1, 4)[None, :, None, None, None]
    t = sample_timesteps(2, 4, "subset" if layout == "tracks" else "shared", generator=torch.Generator().manual_seed(0))
    noise, sched, cond = torch.randn(x0.shape), make_schedule("cosine"), Cond(mix=x0.sum(1, keepdim=True))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(200):
        loss = diffusion_loss(m, x0, t, sched, cond, noise=noise)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[0] / min(losses[-10:]) >= 10, (losses[0], losses[-10:])


def test_save_and_load_pretrained(tmp_path):
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks", label_dim=3)))
    save_pretrained(m, tmp_path)
    back = from_pretrained(MultiTrackUNet, tmp_path)
    x, t = torch.randn(1, 2, 8, 8, 8), torch.rand(1, 2)
    with torch.no_grad(): torch.testing.assert_close(back(x, t, Cond(labels=torch.ones(1, 2, 3))), m(x, t, Cond(labels=torch.ones(1, 2, 3))))
    assert back.prediction == "v"


def test_slakh_presets_are_the_released_msgld_models():
    for preset, width, count in (("slakh", 128, 305_165_444), ("slakh_arrange", 192, 686_513_860)):
        cfg = UNetConfig.preset(preset)
        assert (cfg.layout, cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_ds, cfg.head_channels,
                cfg.prediction, cfg.film) == ("msgld", width, (1, 2, 3, 5), 2, (8, 4, 2), 32, "eps", False)
        with torch.device("meta"): m = MultiTrackUNet(cfg)
        assert sum(p.numel() for p in m.parameters()) == count   # the authors' UNetModel, counted on the meta device


def test_bad_inputs_say_what_to_do():
    m = MultiTrackUNet(UNetConfig.preset("tiny"))
    x, t = torch.randn(2, 4, 8, 16, 8), torch.full((2, 4), 0.5)
    with pytest.raises(ValueError, match="multiples of the U-Net's total down-sampling 2"): m(torch.randn(2, 4, 8, 15, 8), t)
    with pytest.raises(ValueError, match="multiples"): m(torch.randn(2, 4, 8, 16, 7), t)
    with pytest.raises(ValueError, match="one timestep per track"): m(x, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="built for n_tracks = 4"): m(torch.randn(2, 3, 8, 16, 8), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="one timestep per sample"): m(x, torch.tensor([[0.0, 0.5, 0.5, 0.5]] * 2))
    with pytest.raises(ValueError, match=r"cond.mix must be the mixture's latent \(B, 1, C, T, F\)"):
        m(x, t, Cond(mix=torch.randn(2, 1, 8, 8, 8)))
    with pytest.raises(ValueError, match="z_channels = 8"): m(torch.randn(2, 4, 4, 16, 8), t)
    with pytest.raises(ValueError, match="dimensions"): m(torch.randn(4, 8, 16, 8), t)
    with pytest.raises(TypeError, match="Cond"): m(x, t, {"mix": None})
    with pytest.raises(ValueError, match="no label embedding"): m(x, t, Cond(labels=torch.randn(2, 4, 3)))
    trk = MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks", label_dim=3))
    with pytest.raises(ValueError, match=r"cond.labels must be \(B, S, label_dim\)"): trk(x, t, Cond(labels=torch.randn(2, 3, 3)))
    with pytest.raises(ValueError, match="layout='tracks'"): UNetConfig(layout="msgld", label_dim=4)
    with pytest.raises(ValueError, match="layout must be one of"): UNetConfig(layout="dit")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixture_as_input_channels(layout):
    m = trained_like(MultiTrackUNet(UNetConfig.preset("tiny", layout=layout, mix_cond="concat")))
    x, t = torch.randn(2, 4, 8, 16, 8), torch.full((2, 4), 0.5)
    a, b = Cond(mix=torch.randn(2, 1, 8, 16, 8)), Cond(mix=torch.randn(2, 1, 8, 16, 8))
    with torch.no_grad():
        assert m(x, t, a).shape == x.shape and (m(x, t, a) - m(x, t, b)).abs().max() > 1e-3
        torch.testing.assert_close(m(x, t, drop_cond(a, 1.0)), m(x, t, None))        # a zero mixture is no condition
    assert m.mix_proj is None and UNetConfig(mix_cond=True).mix_cond == "add"        # configs saved with a bool still load
    with pytest.raises(ValueError, match="mix_cond must be one of"): UNetConfig(mix_cond="film")
