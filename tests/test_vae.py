"""The mel VAE: shapes over stems, the KL against torch.distributions, the late discriminator, StemMels, exact resume,
scale_by_std, and the bad inputs the issue lists."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msg_edu.core import seed_everything
from msg_edu.pretrained import from_pretrained
from msg_edu.data import SlakhIndex
from msg_edu.datasets import StemsDataset
from msg_edu.learner import Callback, Learner, NonFiniteLossError, TrainConfig, make_loader
from msg_edu.mel import MelFrontend
from msg_edu.vae import LOG_FLOOR, AutoencoderKL, VAEConfig, pad_frames
from msg_edu.vae_training import StemMels, VAETraining, disc_loss, train_vae, vae_loss, vae_phases

TINY = VAEConfig.preset("tiny")


def short_recipe(steps=12, **train):
    r = VAETraining.preset("tiny")
    return r.replace(train=TrainConfig.preset("tiny", lr=1e-2, steps=steps, warmup=2, log_every=2, valid_every=0,
                                              ema_decay=0.0, **train).to_dict())


def test_many_stems_encode_at_once_and_match_one_by_one():
    vae = AutoencoderKL(TINY).eval()
    mel = torch.randn(2, 3, 32, 64)  # (B, S, T, F)
    z = vae.encode(mel).mode()
    assert z.shape == (2, 3, 8, 8, 16)
    torch.testing.assert_close(z[1, 2], vae.encode(mel[1, 2]).mode(), atol=1e-5, rtol=1e-5)
    assert vae.decode(z).shape == mel.shape


def test_kl_equals_torch_distributions():
    vae = AutoencoderKL(TINY)
    post = vae.encode(torch.randn(2, 16, 64))
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    ref = torch.distributions.kl_divergence(q, p).sum(dim=(-3, -2, -1))
    torch.testing.assert_close(post.kl(), ref, rtol=1e-5, atol=1e-5)


def test_bad_mels_say_what_to_do():
    vae = AutoencoderKL(TINY)
    with pytest.raises(ValueError, match="expects 64"): vae.encode(torch.randn(1, 32, 80))
    with pytest.raises(ValueError, match=r"not a multiple of 4.*pad_frames"): vae.encode(torch.randn(1, 30, 64))
    padded = pad_frames(torch.randn(1, 30, 64), 4)
    assert padded.shape == (1, 32, 64) and bool((padded[:, 30:] == LOG_FLOOR).all())
    assert vae.encode(padded).mean.shape == (1, 8, 8, 16)
    with pytest.raises(ValueError, match="NaN"): vae.encode(torch.full((1, 32, 64), float("nan")))
    with pytest.raises(ValueError, match="channels"): vae.decode(torch.randn(1, 4, 8, 16))
    with pytest.raises(ValueError, match="norm_groups"): VAEConfig(ch=24)
    with pytest.raises(ValueError, match="divisible"): VAEConfig(n_mels=66)


def test_discriminator_starts_late_and_trains_its_own_weights():
    seed_everything(0)
    vae = AutoencoderKL(VAEConfig.preset("tiny", disc_start=3, disc_channels=8))
    data = [torch.randn(2, 32, 64) - 5 for _ in range(4)]
    disc0 = {k: v.clone() for k, v in vae.discriminator.state_dict().items()}
    seen = {}

    class Watch(Callback):
        def after_step(self, learn):
            seen[learn.step] = ({k: v.clone() for k, v in vae.discriminator.state_dict().items()}, dict(learn.metrics))

    Learner(vae, data, vae_phases(vae), steps=6, lr=1e-3, log_every=1, progress=False, cbs=[Watch()]).fit()
    for step in (1, 2, 3):  # updates 1..3 run before disc_start = 3 updates are done
        assert all(torch.equal(seen[step][0][k], disc0[k]) for k in disc0)
        assert "discriminator/loss" not in seen[step][1] and "autoencoder/g_adv" not in seen[step][1]
    m = seen[6][1]
    assert "discriminator/loss" in m and "autoencoder/g_adv" in m and m["autoencoder/disc_lambda"] > 0
    assert any(not torch.equal(seen[6][0][k], disc0[k]) for k in disc0 if k.endswith("weight"))
    # the hinge loss, by hand (same posterior sample: same seed)
    mel = data[0]
    seed_everything(1); d = disc_loss(vae, mel)["loss"]
    seed_everything(1)
    with torch.no_grad(): real, fake = vae.discriminator(mel), vae.discriminator(vae(mel)[0])
    torch.testing.assert_close(d, 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()))


def test_non_finite_loss_stops_with_the_step():
    vae = AutoencoderKL(TINY)
    data = [torch.randn(2, 32, 64) for _ in range(3)]

    class Poison(Callback):
        def after_step(self, learn):
            if learn.step == 2:
                with torch.no_grad(): vae.decoder.conv_out.bias.fill_(float("nan"))

    learn = Learner(vae, data, vae_phases(vae), steps=5, progress=False, cbs=[Poison()])
    with pytest.raises(NonFiniteLossError, match="at step 3"): learn.fit()
    assert learn.step == 2


def test_stem_mels_items_crops_and_mixes(toy, cache):
    index = SlakhIndex(toy, "train", stems="all", cache_dir=cache)
    mels = StemMels(index, 1.28)
    segs = StemsDataset(index, 1.28)
    assert mels.frames == 128 and mels.counts["mixes"] == len(segs) == mels.counts["segments"]
    assert mels.counts["stems"] + mels.counts["mixes"] == len(mels)
    i = next(i for i, (*_, k) in enumerate(mels.items) if k < 0)  # a mixture item equals the mel of StemsDataset's mix
    ti, start, _ = mels.items[i]
    ref = MelFrontend()(segs[segs.items.index((ti, start))]["mix"][0])[:128]
    torch.testing.assert_close(mels[i], ref)
    k = next(i for i, (*_, k) in enumerate(mels.items) if k >= 0)
    assert mels[k].shape == (128, 64) and "@" in mels.describe(k)
    crops = StemMels(index, 1.28, crop_frames=64)
    assert crops[0].shape == (64, 64)
    with pytest.raises(ValueError, match="multiple of 4"): StemMels(index, 1.28, crop_frames=30)
    with pytest.raises(ValueError, match="Hz"): StemMels(SlakhIndex(toy, "train", stems="all", sr=22050, cache_dir=cache), 1.28)


def test_train_vae_learns_scales_and_saves(toy, cache, tmp_path):
    vae, learn, m = train_vae(toy, tmp_path, "tiny", cache_dir=cache, progress=False)
    assert m["l1"] < 0.6 * m["baseline_l1"], m  # 60 CPU steps: far below the per-frequency mean
    assert json.loads((tmp_path / "metrics.json").read_text())["l1"] == pytest.approx(m["l1"])
    loaded = from_pretrained(AutoencoderKL, tmp_path)
    assert float(loaded.scale_factor) == pytest.approx(m["scale_factor"]) != 1.0
    mels = StemMels(SlakhIndex(toy, "train", stems="all", cache_dir=cache), 1.28)
    batch = torch.stack([mels[i] for i in range(min(64, len(mels)))])
    with torch.no_grad(): z = loaded.encode_latent(batch)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-3)  # unit std on the measured batch


def test_resume_is_exact_and_runs_are_not_overwritten(toy, cache, tmp_path):
    recipe = short_recipe(save_every=6)

    class Crash(Callback):
        def after_step(self, learn):
            if learn.step == 8: raise KeyboardInterrupt  # Ctrl-C between checkpoints: fit saves step 8 first

    straight = train_vae(toy, tmp_path / "a", recipe, cache_dir=cache, progress=False)[0]
    with pytest.raises(KeyboardInterrupt): train_vae(toy, tmp_path / "b", recipe, cache_dir=cache, progress=False, cbs=[Crash()])
    with pytest.raises(FileExistsError, match="resume=True"): train_vae(toy, tmp_path / "b", recipe, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no checkpoint"): train_vae(toy, tmp_path / "c", recipe, resume=True)
    resumed = train_vae(toy, tmp_path / "b", recipe, cache_dir=cache, progress=False, resume=True)[0]
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_checkpoint_of_another_config_names_the_keys(toy, cache, tmp_path):
    train_vae(toy, tmp_path, short_recipe(steps=2), cache_dir=cache, progress=False)
    other = short_recipe(steps=2).replace(vae=VAEConfig.preset("tiny", ch=16, norm_groups=8).to_dict())
    with pytest.raises(ValueError, match=r"model config differs in ch \(checkpoint 8, now 16\)"):
        train_vae(toy, tmp_path, other, cache_dir=cache, progress=False, resume=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["z_channels"] = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shape mismatches.*conv_out"):
        from_pretrained(AutoencoderKL, tmp_path)


def test_cli_trains_and_resumes(toy, cache, tmp_path):
    exe = Path(sys.executable).parent / "msg-edu"
    args = [str(exe), "train", "vae", "--preset", "tiny", "--data", str(toy), "--out", str(tmp_path / "run"),
            "--cache", str(cache), "--steps", "4"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "held-out log-mel L1" in res.stdout and (tmp_path / "run" / "model.safetensors").exists()
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr  # nothing left to train: it re-evaluates and saves
    res = subprocess.run([str(exe), "train", "vae", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "msg-edu toy-slakh" in res.stderr


def test_shortcut_starts_as_the_block_average_and_keeps_the_latent_shape():
    "DC-AE's space-to-channel shortcut: an untrained VAE reconstructs the mel averaged over pairs of frames, exactly."
    seed_everything(0)
    vae = AutoencoderKL(VAEConfig.preset("toy")).eval()
    mel = LOG_FLOOR + 8 * torch.rand(3, 32, 64)
    with torch.no_grad():
        post = vae.encode(mel)
        rec = vae.decode(post.mode())
    assert post.mean.shape == (3, 8, 8, 16)
    pairs = torch.nn.functional.avg_pool2d(mel[:, None], (2, 1)).repeat_interleave(2, -2)[:, 0]
    assert torch.allclose(rec, pairs, atol=1e-5)
    assert float(post.std.max()) < 0.02                      # a nearly deterministic posterior at the start
    plain = AutoencoderKL(VAEConfig.preset("toy", shortcut=False)).eval()
    with torch.no_grad(): assert (plain(mel, sample=False)[0] - mel).abs().mean() > 1.0   # without it: noise
    with pytest.raises(ValueError, match="z_channels must divide"):
        VAEConfig.preset("toy", z_channels=3)


def test_model_module_imports_no_training_code_and_old_paths_still_work():
    import subprocess, sys
    code = ("import sys, msg_edu.vae; print(sorted(m for m in ('msg_edu.learner', 'msg_edu.data', 'msg_edu.optim', "
            "'msg_edu.vae_training') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    import msg_edu.vae as old, msg_edu.vae_training as new
    for name in old._MOVED: assert getattr(old, name) is getattr(new, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"): old.nope
