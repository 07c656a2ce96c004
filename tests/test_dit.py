"MGE-LDM's track-grouped DiT (chapter 07b): tracks meet only in attention, AdaLN-Zero, roles, bad input, and its place in MGE-LDM."
import tempfile

import pytest
import torch

from msg_edu.core import n_params
from msg_edu.dit import DiTBlock, DiTConfig, TrackDiT, patchify, unpatchify
from msg_edu.guidance import Cond
from msg_edu.mgeldm import MGELDMTraining
from msg_edu.triplets import TripletConfig, TripletDenoiser


def scramble(model, seed=0, std=0.2):
    "Random weights everywhere, gates included: a stand-in for a trained model."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def no_attention(model):
    return [b.attn.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) for b in model.blocks]


@pytest.fixture
def dit():
    return scramble(TrackDiT(DiTConfig.preset("tiny", label_dim=8)))


def inputs(T=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 8, T, 16, generator=g), torch.tensor([[0.0, 0.4, 0.7]]), torch.randn(1, 3, 8, generator=g)


def track_jacobian(model, x, t, lab):
    J = torch.autograd.functional.jacobian(lambda z: model(z, t, Cond(labels=lab)), x).reshape(x.numel(), x.numel())
    return J.abs().reshape(3, J.shape[0] // 3, 3, -1).sum((1, 3))      # (output track, input track)


def test_tracks_meet_only_in_attention(dit):
    x, t, lab = inputs()
    off = ~torch.eye(3, dtype=torch.bool)
    assert (track_jacobian(dit, x, t, lab)[off] > 0).all()
    handles = no_attention(dit)
    try: blocks = track_jacobian(dit, x, t, lab)
    finally:
        for h in handles: h.remove()
    assert torch.equal(blocks[off], torch.zeros(6)) and (blocks.diagonal() > 0).all()


def test_one_tracks_time_reaches_others_only_through_attention(dit):
    x, t, lab = inputs()
    t2 = t.clone(); t2[0, 1] = 0.95                                     # the submix's time changes
    with torch.no_grad():
        def delta(): return (dit(x, t2, Cond(labels=lab)) - dit(x, t, Cond(labels=lab))).abs().flatten(2).amax(-1)[0]
        on = delta()
        handles = no_attention(dit)
        off = delta()
        for h in handles: h.remove()
    assert (on > 0).all() and off[1] > 0 and off[0] == 0 and off[2] == 0


def test_adaln_zero_identity_and_zero_output():
    torch.manual_seed(0)
    blk = DiTBlock(32, 4)
    h, c = torch.randn(2, 3, 5, 32), torch.randn(2, 3, 32)
    with torch.no_grad(): assert torch.equal(blk(h, c), h)
    model = TrackDiT(DiTConfig.preset("tiny", label_dim=8))
    x = torch.randn(2, 3, 8, 4, 16)
    with torch.no_grad():
        for b in model.blocks:                                          # every block of the model is the identity too
            tok = torch.randn(2, 3, 3, model.config.track_dim)
            assert torch.equal(b(tok, torch.randn(2, 3, model.config.track_dim)), tok)
        assert torch.equal(model(x, torch.rand(2, 3), Cond(labels=torch.randn(2, 3, 8))), torch.zeros_like(x))


def test_roles_alone_tell_the_slots_apart(dit):
    x, t, lab = inputs(T=3)
    perm = [0, 2, 1]                                                    # submix <-> source
    with torch.no_grad():
        y = dit(x, t, Cond(labels=lab))
        roles = dit.roles.clone()
        dit.roles.copy_(roles[perm])
        torch.testing.assert_close(dit(x[:, perm], t[:, perm], Cond(labels=lab[:, perm])), y[:, perm], atol=1e-5, rtol=1e-5)
        dit.roles.copy_(roles)
        assert not torch.allclose(dit(x[:, perm], t[:, perm], Cond(labels=lab[:, perm])), y[:, perm], atol=1e-3)


def test_patches_and_lengths():
    x = torch.randn(2, 3, 8, 6, 16)
    assert torch.equal(unpatchify(patchify(x, 3), 8, 3), x)
    model = scramble(TrackDiT(DiTConfig.preset("tiny", patch=2)))
    with torch.no_grad():
        for T in (2, 4, 10): assert model(torch.randn(1, 3, 8, T, 16), torch.rand(1, 3)).shape == (1, 3, 8, T, 16)


def test_bad_input_says_what_to_do():
    model = TrackDiT(DiTConfig.preset("tiny", label_dim=8, patch=2))
    t = torch.rand(1, 3)
    with pytest.raises(ValueError, match="x_t"): model(torch.randn(3, 8, 4, 16), t)
    with pytest.raises(ValueError, match="n_freqs = 16"): model(torch.randn(1, 3, 8, 4, 32), t)
    with pytest.raises(ValueError, match="z_channels = 8"): model(torch.randn(1, 3, 4, 4, 16), t)
    with pytest.raises(ValueError, match="pad"): model(torch.randn(1, 3, 8, 5, 16), t)
    with pytest.raises(ValueError, match=r"label_dim\) = \(1, 3, 8\)"): model(torch.randn(1, 3, 8, 4, 16), t, Cond(labels=torch.randn(1, 3, 4)))
    with pytest.raises(ValueError, match="t = 0"): model(torch.randn(1, 3, 8, 4, 16), t, Cond(mix=torch.randn(1, 1, 8, 4, 16)))
    with pytest.raises(ValueError, match="no label embedding"):
        TrackDiT(DiTConfig.preset("tiny"))(torch.randn(1, 3, 8, 4, 16), t, Cond(labels=torch.randn(1, 3, 8)))
    with pytest.raises(ValueError, match="divisible by heads"): DiTConfig(track_dim=30, heads=4)
    with pytest.raises(ValueError, match="prediction"): DiTConfig(prediction="score")


def test_backbone_switch_in_mgeldm():
    unet = TripletDenoiser(TripletConfig.preset("tiny"))
    dit = TripletDenoiser(TripletConfig.preset("tiny", backbone="dit"))
    assert any(k.startswith("unet.") for k in unet.state_dict()) and "roles" in unet.state_dict()
    assert all(not k.startswith("unet.") for k in dit.state_dict()) and "dit.roles" in dit.state_dict()
    z, lab = torch.randn(2, 3, 8, 8, 16), dit.label_cond(["bass", "drums"])
    assert dit(z, torch.rand(2, 3), Cond(labels=lab)).shape == z.shape
    r = MGELDMTraining.preset("toy", model=dict(backbone="dit"))
    assert r.denoiser is r.model.dit and r.denoiser.down == r.model.dit.patch and r.model.dit.label_dim == r.model.label.dim
    with pytest.raises(ValueError, match="backbone must be one of"): TripletConfig.preset("tiny", backbone="mlp")
    with pytest.raises(ValueError, match="DiT's label_dim"): TripletConfig.preset("tiny", backbone="dit", dit=dict(label_dim=5))
    slakh = TripletConfig.preset("slakh", backbone="dit").dit
    assert (slakh.depth, slakh.n_tracks * slakh.track_dim, slakh.label_dim) == (24, 1536, 512)
    with torch.device("meta"): assert 100e6 < n_params(TrackDiT(slakh)) < 130e6


def test_saved_dit_denoiser_round_trips_and_old_configs_load_as_unet():
    den = scramble(TripletDenoiser(TripletConfig.preset("tiny", backbone="dit")))
    with tempfile.TemporaryDirectory() as d:
        den.save_pretrained(d)
        back = TripletDenoiser.from_pretrained(d)
    z, t = torch.randn(1, 3, 8, 4, 16), torch.rand(1, 3)
    with torch.no_grad(): torch.testing.assert_close(back(z, t), den(z, t))
    old = TripletConfig.preset("tiny").to_dict()
    del old["backbone"], old["dit"]                                      # a config saved before the DiT existed
    cfg = TripletConfig.from_dict(old)
    assert cfg.backbone == "unet" and cfg.denoiser is cfg.unet
