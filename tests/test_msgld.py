import json
import math
import warnings

import pytest
import torch

from msg_edu.audio import load_audio, resample, save_audio
from msg_edu.samplers import DiffusionConfig
from msg_edu.latent import LatentSegments
from msg_edu.learner import Callback, TrainConfig
from msg_edu.msgld import MSGLD, MSGLDTraining, dry_run, generate_files, separate_file, train_msgld
from msg_edu.scoring import onset_agreement, onset_times
from msg_edu.unet import MultiTrackUNet, UNetConfig
from msg_edu.vae import AutoencoderKL, VAEConfig
from msg_edu.vae_training import VAETraining, train_vae


@pytest.fixture(scope="module")
def pipe():
    "An untrained tiny pipeline: enough to check shapes, notes and errors."
    torch.manual_seed(0)
    return MSGLD(AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny")),
                 DiffusionConfig.preset("tiny", steps=2), segment_seconds=1.28)


def tone(seconds=1.0, sr=16000, f=440.0):
    t = torch.arange(int(seconds * sr)) / sr
    return 0.3 * torch.sin(2 * math.pi * f * t)


def test_prepare_mix_downmixes_resamples_and_refuses_silence(pipe):
    with pytest.warns(UserWarning, match="averaged"):
        wave, notes = pipe.prepare_mix(torch.stack([tone(), tone(f=220.0)]))
    assert wave.shape == (1, 1, 16000) and len(notes) == 1
    torch.testing.assert_close(wave[0, 0], (tone() + tone(f=220.0)) / 2)
    with pytest.warns(UserWarning, match="resampled to the model's 16000 Hz"):
        wave, notes = pipe.prepare_mix(tone(sr=44100), sr=44100)
    assert wave.shape[-1] == 16000
    with pytest.raises(ValueError, match="silent"): pipe.prepare_mix(torch.zeros(16000))
    with pytest.raises(ValueError, match="silent"): pipe.prepare_mix(torch.stack([tone()[None], torch.zeros(1, 16000)]))
    with pytest.raises(ValueError, match="at least 0.25 s"): pipe.prepare_mix(tone(0.1))
    with pytest.raises(ValueError, match="mix"): pipe.prepare_mix(torch.ones(1, 1, 1, 16000))
    with pytest.raises(ValueError, match="NaN|finite"): pipe.prepare_mix(torch.full((16000,), float("nan")))


def test_separate_generate_arrange_shapes(pipe):
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sep = pipe.separate(torch.stack([tone(1.0), tone(1.0, f=300.0)])[:, None], generator=g)
    assert sep.stems.shape == (2, 4, 16000) and sep.mels.shape == (2, 4, 101, 64)
    torch.testing.assert_close(sep.stems.sum(1), torch.stack([tone(1.0), tone(1.0, f=300.0)]), atol=1e-4, rtol=0)  # mixture-consistent
    gen = pipe.generate(2, seconds=0.64, generator=g)
    assert gen["stems"].shape == (2, 4, 10240) and torch.isfinite(gen["stems"]).all()
    known = torch.stack([tone(f=110.0), torch.zeros(16000), tone(f=196.0), tone(f=262.0)])[None]
    mask = torch.tensor([False, False, True, True])
    arr = pipe.arrange(known, mask, generator=g)
    assert arr["stems"].shape == (1, 4, 16000)
    torch.testing.assert_close(arr["stems"][0, 2:], known[0, 2:])                      # given stems come back as given
    with pytest.raises(ValueError, match="one time embedding"): pipe.arrange(known, mask, conditioning="tdpaint")
    with pytest.raises(ValueError, match="all 4 stems"): pipe.arrange(known[:, :3], mask[:3])
    with pytest.raises(ValueError, match=r"known_mask must be \(4,\)"): pipe.arrange(known, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="reconstruct"): pipe.separate(tone(), reconstruct="magic")
    with pytest.raises(ValueError, match="seconds"): pipe.generate(1, seconds=0.0)


def test_save_load_roundtrip_and_other_kinds(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    back = MSGLD.from_pretrained(tmp_path / "model")
    assert back.stems == pipe.stems and back.segment_seconds == 1.28 and back.diffusion == pipe.diffusion
    a = pipe.separate(tone(), generator=torch.Generator().manual_seed(3)).mels
    b = back.separate(tone(), generator=torch.Generator().manual_seed(3)).mels
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="class AutoencoderKL"): MSGLD.from_pretrained(tmp_path / "model" / "vae")
    with pytest.raises(ValueError, match="does not exist"): MSGLD.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "mge").mkdir(); (tmp_path / "mge" / "mgeldm.json").write_text("{}")
    with pytest.raises(ValueError, match="MGE-LDM"): MSGLD.from_pretrained(tmp_path / "mge")
    meta = json.loads((tmp_path / "model" / "msgld.json").read_text())
    (tmp_path / "model" / "msgld.json").write_text(json.dumps({**meta, "format": "msg_edu.msgld/99"}))
    with pytest.raises(ValueError, match="msgld/99"): MSGLD.from_pretrained(tmp_path / "model")


def test_pipeline_parts_must_agree():
    vae, unet = AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny"))
    with pytest.raises(ValueError, match="predicts 'v'"): MSGLD(vae, unet, DiffusionConfig(prediction="eps"))
    with pytest.raises(TypeError, match="AutoencoderKL"): MSGLD(unet, unet)
    with pytest.raises(ValueError, match="4 tracks"): MSGLD(vae, unet, stems=("bass", "drums"))
    with pytest.raises(ValueError, match="eps|class"): MSGLD(vae, unet, stems=("bass", "drums", "guitar", "kazoo"))


def test_recipe_checks():
    r = MSGLDTraining.preset("toy")
    assert (r.unet.layout, r.unet.mix_cond) == ("stacked", "concat") and r.diffusion.p_drop_mix == 0.2 and r.train.ema_decay > 0
    assert MSGLDTraining.preset("slakh").unet.layout == "msgld"          # the paper's 3-D U-Net
    assert MSGLDTraining.preset("slakh").diffusion.p_drop_mix == 0.1   # the paper's
    s = MSGLDTraining.preset("slakh")
    assert (s.diffusion.prediction, s.diffusion.schedule, s.diffusion.steps, s.diffusion.eta) == ("eps", "linear", 200, 1.0)
    assert (s.train.lr, s.batch_size, s.segment_seconds) == (3e-5, 3, 10.24)
    with pytest.raises(ValueError, match="predicts"):
        MSGLDTraining.preset("toy", diffusion=dict(prediction="eps"))
    with pytest.raises(ValueError, match="multiple of the U-Net"): MSGLDTraining.preset("toy", crop_frames=30)


def test_latent_segments_save_load_and_crop(tmp_path):
    stems, mix = torch.randn(3, 4, 8, 16, 16), torch.randn(3, 1, 8, 16, 16)
    lat = LatentSegments(stems, mix, crop=4, names=["a", "b", "c"])
    assert lat[0]["stems"].shape == (4, 8, 4, 16) and lat[0]["mix"].shape == (1, 8, 4, 16)
    back = LatentSegments.load(lat.save(tmp_path / "l.safetensors"))
    assert torch.equal(back.stems, stems) and back.names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="longer than"): LatentSegments(stems, mix, crop=32)
    with pytest.raises(ValueError, match="same 3 items"): LatentSegments(stems, mix[:2])
    with pytest.raises(ValueError, match="same segments"): LatentSegments(stems, stems)


def test_onsets_against_closed_form():
    x = torch.zeros(32000)
    for t in (0.2, 0.7, 1.3): x[int(t * 16000): int(t * 16000) + 32] = 1.0
    on = onset_times(x)
    assert len(on) == 3 and all(abs(a - b) <= 0.032 for a, b in zip(on, (0.2, 0.7, 1.3)))
    assert onset_agreement(torch.stack([x, x])[None]) == 1.0
    with pytest.raises(ValueError, match="two sounding stems"): onset_agreement(torch.stack([x, torch.zeros(32000)])[None])


def test_dry_run(toy, cache):
    r = dry_run("tiny", toy, cache_dir=cache)
    assert r["unet_params"] == sum(p.numel() for p in MultiTrackUNet(MSGLDTraining.preset("tiny").unet).parameters())
    assert r["segments"] >= 1 and r["steps_per_epoch"] >= 1 and r["estimated_bytes"] > r["train_state_bytes"] > 0
    slakh = dry_run("slakh")
    assert slakh["unet_params"] == 305_165_444 and slakh["latent"] == (4, 8, 256, 16)   # the released separation model


@pytest.fixture(scope="module")
def tiny_vae(toy, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    recipe = VAETraining.preset("tiny", train=dict(steps=4, warmup=1, valid_every=0))
    train_vae(toy, out, recipe, cache_dir=cache, progress=False)
    return out


def test_train_resume_is_exact_and_files_round_trip(toy, cache, tiny_vae, tmp_path):
    recipe = MSGLDTraining.preset("tiny", train=dict(steps=6, save_every=3, valid_every=0, log_every=1))

    class Crash(Callback):
        def after_step(self, learn):
            if learn.step == 4: raise KeyboardInterrupt   # Ctrl-C between checkpoints: fit saves step 4 first

    straight = train_msgld(toy, tmp_path / "a", recipe, vae=tiny_vae, cache_dir=cache, progress=False)[0]
    with pytest.raises(KeyboardInterrupt):
        train_msgld(toy, tmp_path / "b", recipe, vae=tiny_vae, cache_dir=cache, progress=False, cbs=[Crash()])
    with pytest.raises(FileExistsError, match="resume=True"):
        train_msgld(toy, tmp_path / "b", recipe, vae=tiny_vae, cache_dir=cache, progress=False)
    resumed = train_msgld(toy, tmp_path / "b", recipe, vae=tiny_vae, cache_dir=cache, progress=False, resume=True)[0]
    for (k, v), w in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().values()):
        assert torch.equal(v, w), k
    loaded = MSGLD.from_pretrained(tmp_path / "a" / "model")
    assert loaded.segment_seconds == recipe.segment_seconds
    # files in, files out: a 44.1 kHz stereo file is separated into the evaluation layout
    wave = torch.stack([tone(2.5, 44100), tone(2.5, 44100, f=220.0)])
    save_audio(tmp_path / "song.wav", wave, 44100)
    r = separate_file(loaded, tmp_path / "song.wav", tmp_path / "sep", steps=2)
    assert any("averaged" in n for n in r["notes"]) and any("resampled" in n for n in r["notes"])
    assert sorted(p.name for p in r["folder"].iterdir()) == ["bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav"]
    stems = torch.stack([load_audio(r["folder"] / f"{s}.wav")[0][0] for s in loaded.stems])
    mix = load_audio(r["folder"] / "mix.wav")[0][0]
    assert stems.shape[-1] == mix.shape[-1] == 40000
    torch.testing.assert_close(stems.sum(0), mix, atol=1e-3, rtol=0)   # they sum to the mixture
    folders = generate_files(loaded, tmp_path / "gen", 2, 0.64, steps=2)
    assert [f.name for f in folders] == ["gen_000", "gen_001"] and (folders[1] / "mix.wav").exists()


def test_tdpaint_arrangement_with_the_track_axis_unet():
    "The 3-D U-Net refuses TD-Paint (one time for all stems); the track-axis one arranges with it by default."
    pipe = MSGLD(AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny", layout="tracks")),
                 DiffusionConfig.preset("tiny", steps=2))
    known = torch.stack([tone(f=f) for f in (110.0, 220.0, 330.0, 440.0)])[None]
    mask = torch.tensor([False, False, True, True])
    for conditioning in (None, "replace"):
        out = pipe.arrange(known, mask, conditioning=conditioning, generator=torch.Generator().manual_seed(0))
        assert out["stems"].shape == (1, 4, 16000) and torch.isfinite(out["stems"]).all()
        torch.testing.assert_close(out["stems"][0, 2:], known[0, 2:])


def test_evaluate_msgld_follows_msdms_protocol(toy, cache):
    "Whole tracks, missing stems zero-filled (not dropped), the unclipped sum as mixture, the model's own segments."
    from msg_edu.data import SlakhIndex
    from msg_edu.msgld import Separation, evaluate_msgld
    torch.manual_seed(0)
    pipe = MSGLD(AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny")),
                 DiffusionConfig.preset("tiny", steps=2), segment_seconds=1.28)
    seen = []
    def mixture_as_estimate(mix, **kw):          # every stem guessed to be the mixture: SI-SDRi is 0 by definition
        seen.append(mix.shape)
        return Separation(stems=mix.expand(-1, 4, -1).clone(), mels=None, latents=None, notes=[])
    pipe.separate = mixture_as_estimate
    r = evaluate_msgld(pipe, toy, "test", cache_dir=cache)
    from msg_edu.msgld import evaluate_separation           # the old name: warns, then does the same
    with pytest.warns(DeprecationWarning, match="evaluate_msgld"), pytest.raises(TypeError, match="must be an MSGLD"):
        evaluate_separation("not a pipeline", toy)
    index = SlakhIndex(toy, "test", stems=list(pipe.stems), missing="zero", cache_dir=cache)
    assert r["tracks"] == len(index.tracks) and r["zero_filled"] == index.counts["zero-filled (missing a requested stem)"]
    assert r["segment_seconds"] == 1.28 and all(s[-1] == int(1.28 * 16000) for s in seen)
    assert abs(r["si_sdri"]["All"]) < 1e-6
    for s in pipe.stems: assert r["log_mel_l1"][s] == pytest.approx(r["mix_log_mel_l1"][s], rel=1e-5)
