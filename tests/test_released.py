"""The authors' released models: our MSG-LD U-Net and MusicLDM VAE compute exactly the functions of the authors' code.

The references below are plain re-implementations of LDM's `openaimodel.UNetModel` (as MSG-LD configures it: dims=3,
the time embedding added, the pooled mixture added before every input block and after every skip concatenation, the
integer step index embedded, legacy q/k/v order) and of LDM's autoencoder `Encoder`/`Decoder`, written from the
authors' code and reading weights *by the authors' tensor names*. Every name must be read (so ours export exactly the
authors' key set), and the outputs must agree with our modules loaded through the import functions.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from msg_edu.audio import save_audio
from msg_edu.cli import main
from msg_edu.core import seed_everything
from msg_edu.guidance import Cond
from msg_edu.msgld import MSGLD
from msg_edu.unet import LDM_UNET, MultiTrackUNet, UNetConfig, from_ldm_state_dict, to_ldm_state_dict
from msg_edu.vae import AutoencoderKL, VAEConfig, from_musicldm_state_dict, musicldm_names, to_musicldm_state_dict
from msg_edu.hifigan import HiFiGAN, HiFiGANConfig, to_public_state_dict


class Reads(dict):
    "A state dict that remembers which names were read."
    def __init__(self, *a):
        super().__init__(*a)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)


def randomised(model, std=0.05):
    seed_everything(0)
    for p in model.parameters(): p.data.normal_(0, std)
    return model


# ---------------------------------------------------------------- LDM's UNetModel, MSG-LD's way
def ref_unet(sd, x, k, mix, *, mult=(1, 2, 3, 5), nrb=2, attn_ds=(8, 4, 2), head_ch=32):
    "eps = UNetModel(x (B, S, D, T, F), integer steps k (B,)) with the mixture (B, 1, D, T, F) added MSG-LD's way."
    def conv(h, n, stride=1):
        w = sd[n + ".weight"]
        return F.conv3d(h, w, sd[n + ".bias"], stride=stride, padding=w.shape[-1] // 2)
    def gn(h, n): return F.group_norm(h.float(), 32, sd[n + ".weight"], sd[n + ".bias"], eps=1e-5)
    def res(h, p, emb):
        a = conv(F.silu(gn(h, p + ".in_layers.0")), p + ".in_layers.2")
        a = a + F.linear(F.silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"])[:, :, None, None, None]
        a = conv(F.silu(gn(a, p + ".out_layers.0")), p + ".out_layers.3")
        return (conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h) + a
    def attn(h, p):                                    # AttentionBlock with QKVAttentionLegacy
        b, c = h.shape[:2]
        x_ = h.reshape(b, c, -1)
        qkv = F.conv1d(gn(x_, p + ".norm"), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        heads = c // head_ch
        q, k_, v = qkv.reshape(b * heads, 3 * head_ch, -1).split(head_ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(head_ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k_ * scale).softmax(-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, x_.shape[-1])
        return (x_ + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(h.shape)
    def pooled(ds): return F.avg_pool3d(mix, (1, ds, ds)) if ds > 1 else mix
    mc = sd["time_embed.0.weight"].shape[1]
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = k[:, None].float() * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])), sd["time_embed.2.weight"],
                   sd["time_embed.2.bias"])
    h = conv(x + pooled(1), "input_blocks.0.0")
    hs, i, ds = [h], 1, 1
    for level in range(len(mult)):
        for _ in range(nrb):
            h = res(h + pooled(ds), f"input_blocks.{i}.0", emb)
            if ds in attn_ds: h = attn(h, f"input_blocks.{i}.1")
            hs.append(h); i += 1
        if level < len(mult) - 1:
            h = conv(h + pooled(ds), f"input_blocks.{i}.0.op", stride=(1, 2, 2))
            hs.append(h); i += 1; ds *= 2
    h = res(attn(res(h, "middle_block.0", emb), "middle_block.1"), "middle_block.2", emb)
    i = 0
    for level in reversed(range(len(mult))):
        for j in range(nrb + 1):
            h = torch.cat([h, hs.pop()], 1) + pooled(ds)
            h, n = res(h, f"output_blocks.{i}.0", emb), 1
            if ds in attn_ds: h, n = attn(h, f"output_blocks.{i}.1"), 2
            if level and j == nrb:
                h = F.interpolate(h, (h.shape[2], 2 * h.shape[3], 2 * h.shape[4]), mode="nearest")
                h = conv(h, f"output_blocks.{i}.{n}.conv"); ds //= 2
            i += 1
    return conv(F.silu(gn(h, "out.0")), "out.2")


def small_msgld_unet():
    "MSG-LD's U-Net structure at a test size: 32 channels (the released ones: 128 and 192)."
    return randomised(MultiTrackUNet(UNetConfig.preset("slakh", model_channels=32)), std=0.02)


def test_msgld_unet_computes_the_authors_function():
    unet = small_msgld_unet()
    sd = Reads({k[len(LDM_UNET):]: v for k, v in to_ldm_state_dict(unet).items()})
    back = from_ldm_state_dict({LDM_UNET + k: v for k, v in dict(sd).items()})      # width and stems read off the shapes
    assert back.config.model_channels == 32 and back.config.n_tracks == 4
    x, mix = torch.randn(2, 4, 8, 16, 8), torch.randn(2, 1, 8, 16, 8)
    k = torch.tensor([999, 17])                                                          # LDM's integer step indices
    with torch.no_grad():
        ref = ref_unet(sd, x, k, mix)
        ours = back(x, ((k + 1) / 1000)[:, None].expand(2, 4), Cond(mix=mix))            # our t = (k + 1) / 1000
    assert sd.read == set(sd)                                                            # every authors' name, and no other
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_ema_weights_are_read_from_ldm_names_and_errors_name_the_problem():
    unet = small_msgld_unet()
    raw = to_ldm_state_dict(unet)
    ema_model = randomised(MultiTrackUNet(unet.config), std=0.03)
    ema = {"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in ema_model.state_dict().items()}
    ckpt = {**raw, **ema, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5)}
    x, t = torch.randn(1, 4, 8, 16, 8), torch.full((1, 4), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(from_ldm_state_dict(ckpt)(x, t), ema_model(x, t))              # auto: the EMA copy
        torch.testing.assert_close(from_ldm_state_dict(ckpt, weights="raw")(x, t), unet(x, t))
    with pytest.raises(ValueError, match="no EMA weights"): from_ldm_state_dict(raw, weights="ema")
    missing = dict(raw); missing.pop(LDM_UNET + "middle_block.1.qkv.weight")
    with pytest.raises(ValueError, match=r"missing \['middle_block.1.qkv.weight'\]"): from_ldm_state_dict(missing)
    wrong = dict(raw); wrong[LDM_UNET + "out.2.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"out.2.bias \(5,\) vs \(4,\)"): from_ldm_state_dict(wrong)
    vae_sd = to_musicldm_state_dict(AutoencoderKL(VAEConfig.preset("tiny", disc_start=-1, shortcut=False)))
    with pytest.raises(ValueError, match="autoencoder \\(VAE\\), not MSG-LD's U-Net"): from_ldm_state_dict(vae_sd)
    with pytest.raises(ValueError, match="2-D U-Net"):
        from_ldm_state_dict({LDM_UNET + "input_blocks.0.0.weight": torch.zeros(128, 8, 3, 3)})   # MusicLDM's own U-Net


# ---------------------------------------------------------------- LDM's autoencoder, MusicLDM's configuration
def ref_encode(sd, mel, ch_mult=(1, 2, 4), nrb=2):
    "Moments (B, 2z, T/4, F/4) = quant_conv(Encoder(mel (B, 1, T, F)))."
    return F.conv2d(_ref_encoder(sd, mel, ch_mult, nrb), sd["quant_conv.weight"], sd["quant_conv.bias"])


def _gn(sd, h, n): return F.group_norm(h, 32, sd[n + ".weight"], sd[n + ".bias"], eps=1e-6)
def _c2(sd, h, n, **kw): return F.conv2d(h, sd[n + ".weight"], sd[n + ".bias"], **kw)


def _res(sd, h, p):
    a = _c2(sd, F.silu(_gn(sd, h, p + ".norm1")), p + ".conv1", padding=1)
    a = _c2(sd, F.silu(_gn(sd, a, p + ".norm2")), p + ".conv2", padding=1)
    return (_c2(sd, h, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in sd else h) + a


def _attn(sd, h, p):
    hn = _gn(sd, h, p + ".norm")
    q, k, v = (_c2(sd, hn, f"{p}.{n}") for n in "qkv")
    b, c, H, W = q.shape
    w = torch.softmax(torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5, dim=2)
    out = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, H, W)
    return h + _c2(sd, out, p + ".proj_out")


def _mid(sd, h, part):
    return _res(sd, _attn(sd, _res(sd, h, f"{part}.mid.block_1"), f"{part}.mid.attn_1"), f"{part}.mid.block_2")


def _ref_encoder(sd, mel, ch_mult, nrb):
    h = _c2(sd, mel, "encoder.conv_in", padding=1)
    for level in range(len(ch_mult)):
        for j in range(nrb): h = _res(sd, h, f"encoder.down.{level}.block.{j}")
        if level < len(ch_mult) - 1: h = _c2(sd, F.pad(h, (0, 1, 0, 1)), f"encoder.down.{level}.downsample.conv", stride=2)
    h = _mid(sd, h, "encoder")
    return _c2(sd, F.silu(_gn(sd, h, "encoder.norm_out")), "encoder.conv_out", padding=1)


def ref_decode(sd, z, ch_mult=(1, 2, 4), nrb=2):
    "Mel (B, 1, T, F) = Decoder(post_quant_conv(z))."
    h = _c2(sd, _c2(sd, z, "post_quant_conv"), "decoder.conv_in", padding=1)
    h = _mid(sd, h, "decoder")
    for level in reversed(range(len(ch_mult))):
        for j in range(nrb + 1): h = _res(sd, h, f"decoder.up.{level}.block.{j}")
        if level: h = _c2(sd, F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{level}.upsample.conv", padding=1)
    return _c2(sd, F.silu(_gn(sd, h, "decoder.norm_out")), "decoder.conv_out", padding=1)


def small_musicldm_vae():
    "MusicLDM's VAE structure (ch_mult (1, 2, 4), 2 blocks, middle attention, 32 groups) at 32 channels (theirs: 128)."
    return randomised(AutoencoderKL(VAEConfig.preset("slakh", ch=32, disc_start=-1)), std=0.05)


def test_musicldm_vae_computes_the_authors_function():
    vae = small_musicldm_vae()
    sd = Reads(to_musicldm_state_dict(vae))
    lightning = {**dict(sd), "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(1)}
    back = from_musicldm_state_dict(lightning)                  # config read off the shapes; the loss weights ignored
    mel = torch.randn(2, 1, 32, 64) - 4
    with torch.no_grad():
        moments = ref_encode(sd, mel)
        torch.testing.assert_close(back.encode(mel[:, 0]).mean, moments[:, :8], rtol=1e-4, atol=1e-4)
        z = torch.randn(2, 8, 8, 16)
        torch.testing.assert_close(back.decode(z), ref_decode(sd, z)[:, 0], rtol=1e-4, atol=1e-4)
    assert sd.read == set(sd)
    assert len(musicldm_names(VAEConfig.preset("slakh"))) == 196     # tensors of the 128-channel VAE (q, k, v fused)
    in_ldm = {"first_stage_model." + k: v for k, v in dict(sd).items()}
    with torch.no_grad(): torch.testing.assert_close(from_musicldm_state_dict(in_ldm).decode(z), back.decode(z))
    bad = dict(sd); bad.pop("decoder.up.1.upsample.conv.weight")
    with pytest.raises(ValueError, match=r"missing \['decoder.up.1.upsample.conv.weight'\]"): from_musicldm_state_dict(bad)
    with pytest.raises(ValueError, match="a U-Net"): from_musicldm_state_dict(to_ldm_state_dict(small_msgld_unet()))


# ---------------------------------------------------------------- the pipeline and the command line
def released_files(tmp_path, with_vocoder: bool = True):
    "The authors' three files, at test size: the U-Net checkpoint (with its VAE inside), vae-ckpt.ckpt, hifigan-ckpt.ckpt."
    unet, vae = small_msgld_unet(), small_musicldm_vae()
    ckpt = {**to_ldm_state_dict(unet), "scale_factor": torch.tensor(0.5),
            **{"first_stage_model." + k: v for k, v in to_musicldm_state_dict(vae).items()}}
    torch.save({"state_dict": ckpt, "global_step": 72000}, tmp_path / "msgld_checkpoint.pt")
    torch.save({"state_dict": to_musicldm_state_dict(vae), "epoch": 3}, tmp_path / "vae-ckpt.ckpt")
    if with_vocoder:
        torch.save({"generator": to_public_state_dict(randomised(HiFiGAN(HiFiGANConfig())))}, tmp_path / "hifigan-ckpt.ckpt")
    return unet, vae


def test_released_files_build_a_working_pipeline(tmp_path):
    unet, vae = released_files(tmp_path)
    pipe = MSGLD.from_released(tmp_path / "msgld_checkpoint.pt", tmp_path / "vae-ckpt.ckpt", tmp_path / "hifigan-ckpt.ckpt")
    assert float(pipe.vae.scale_factor) == 0.5 and isinstance(pipe.vocoder, HiFiGAN)
    assert (pipe.diffusion.prediction, pipe.diffusion.sampler, pipe.diffusion.steps, pipe.diffusion.eta) == ("eps", "ddim", 200, 1.0)
    x, t = torch.randn(1, 4, 8, 16, 16), torch.full((1, 4), 0.3)
    with torch.no_grad(): torch.testing.assert_close(pipe.unet(x, t), unet(x, t))
    mix = 0.3 * torch.sin(torch.arange(16000 * 0.64) * 2 * math.pi * 220 / 16000)        # 64 mel frames: latent 16
    sep = pipe.separate(mix, steps=1, generator=torch.Generator().manual_seed(0))
    assert sep.stems.shape == (1, 4, mix.shape[-1]) and sep.latents.shape == (1, 4, 8, 16, 16)
    torch.testing.assert_close(sep.stems.sum(1), mix[None], rtol=1e-4, atol=1e-5)        # mixture-consistent stems
    alone = MSGLD.from_released(tmp_path / "msgld_checkpoint.pt")         # the VAE inside the U-Net file; Griffin-Lim
    assert alone.vocoder is None and torch.equal(alone.vae.decoder.conv_out.weight, pipe.vae.decoder.conv_out.weight)
    torch.save({"state_dict": {k: v for k, v in torch.load(tmp_path / "msgld_checkpoint.pt", weights_only=True)["state_dict"].items()
                               if k != "scale_factor"}}, tmp_path / "no_scale.pt")
    with pytest.raises(ValueError, match="no scale_factor"): MSGLD.from_released(tmp_path / "no_scale.pt")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callbacks": {"cb": torch.nn.Linear(1, 1)}}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="never unpickles code"): MSGLD.from_released(tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="not MSG-LD's U-Net"): MSGLD.from_released(tmp_path / "vae-ckpt.ckpt")


def test_cli_imports_the_released_model_and_separates_with_it(tmp_path, capsys):
    released_files(tmp_path, with_vocoder=False)
    out = tmp_path / "released"
    assert main(["import", "msgld", "--unet", str(tmp_path / "msgld_checkpoint.pt"), "--out", str(out)]) == 0
    assert "parameters (32 channels)" in capsys.readouterr().out
    assert main(["import", "msgld", "--unet", str(tmp_path / "msgld_checkpoint.pt"), "--out", str(out)]) == 2   # not empty
    assert main(["import", "msgld", "--unet", str(tmp_path / "vae-ckpt.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert "not MSG-LD's U-Net" in capsys.readouterr().err
    song = tmp_path / "song.wav"
    save_audio(song, 0.3 * torch.sin(torch.arange(16000) * 2 * math.pi * 220 / 16000)[None], 16000)
    sep = tmp_path / "sep"
    assert main(["separate", str(song), "--model", str(out), "--out", str(sep), "--steps", "1", "--segment", "0.64"]) == 0
    assert sorted(p.name for p in (sep / "song").iterdir()) == ["bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav"]


def test_dry_run_prints_the_authors_parameter_count(tmp_path, capsys):
    data = tmp_path / "toy11"                      # tracks long enough for one 10.24 s segment
    assert main(["toy-slakh", "--out", str(data), "--preset", "tiny", "--seconds", "11"]) == 0
    assert main(["train", "msgld", "--preset", "slakh", "--data", str(data), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "U-Net 305,165,444 parameters" in capsys.readouterr().out
