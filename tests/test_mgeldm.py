import math
import warnings

import pytest
import torch

from msg_edu.audio import load_audio, save_audio
from msg_edu.guidance import Cond
from msg_edu.samplers import DiffusionConfig
from msg_edu.mgeldm import MGELDM, MGELDMTraining, MGE_DIFFUSION, add_stem_file, extract_file
from msg_edu.triplets import LabelConfig, LabelEncoder, TripletConfig, TripletDenoiser, TripletLatents, label_words
from msg_edu.vae import AutoencoderKL, VAEConfig


@pytest.fixture(scope="module")
def pipe():
    "An untrained tiny MGE-LDM: enough for shapes, notes and errors."
    torch.manual_seed(0)
    return MGELDM(AutoencoderKL(VAEConfig.preset("tiny")), TripletDenoiser(TripletConfig.preset("tiny")),
                  DiffusionConfig(**MGE_DIFFUSION, steps=2), segment_seconds=1.28)


def tone(seconds=1.0, sr=16000, f=440.0):
    return 0.3 * torch.sin(2 * math.pi * f * torch.arange(int(seconds * sr)) / sr)


def test_label_encoder_shares_words_and_refuses_unknown_names():
    enc = LabelEncoder(LabelConfig(dim=4))
    assert label_words("Lead 1 (square)") == ["lead", "square"]
    e = enc(["bass", "BASS", "Electric Bass (finger)"])
    torch.testing.assert_close(e[0], e[1])
    torch.testing.assert_close(e[2], enc.words.weight[[enc.index[w] for w in ("electric", "bass", "finger")]].mean(0))
    with pytest.raises(ValueError, match=r"unknown label 'guitr'.*Guitar"): enc(["guitr"])
    with pytest.raises(ValueError, match="empty label"): enc([""])
    with pytest.raises(ValueError, match=r"\(B, 4\)"): enc(torch.zeros(2, 5))
    assert enc(torch.zeros(2, 4)).shape == (2, 4)
    with pytest.raises(TypeError, match="string"): enc([3])


def test_denoiser_roles_and_labels():
    den = TripletDenoiser(TripletConfig.preset("tiny"))
    assert den.config.label.vocabulary                        # saved with the weights
    lab = den.label_cond(["bass", "drums"])
    assert lab.shape == (2, 3, 16) and lab[:, :2].abs().sum() == 0 and lab[:, 2].abs().sum() > 0
    z = torch.randn(2, 3, 8, 8, 16)
    assert den(z, torch.rand(2, 3), Cond(labels=lab)).shape == z.shape
    with pytest.raises(ValueError, match="3 tracks"): den(torch.randn(2, 4, 8, 8, 16), torch.rand(2, 4))
    with pytest.raises(ValueError, match="layout='tracks'"): TripletConfig.preset("tiny", unet=dict(layout="msgld"))


def test_recipe_is_the_authors_code():
    r = MGELDMTraining.preset("slakh")
    d = r.diffusion
    assert (d.schedule, d.prediction, d.t_min, d.t_pattern, d.p_known) == ("cosine", "v", 0.02, "mge", 0.75)
    assert (d.p_drop_labels, MGE_DIFFUSION["p_drop_labels"], r.segment_seconds) == (0.4, 0.1, 12.8)   # code 0.4, paper 0.1
    assert (d.sampler, d.steps, d.guidance_w) == ("ddim", 250, 2.0)
    assert (r.train.lr, r.train.weight_decay, r.train.grad_clip, r.train.ema_decay, r.batch_size) == (5e-5, 1e-3, 1.0, 0.9999, 64)


def test_tasks_shapes_notes_and_errors(pipe):
    g = torch.Generator().manual_seed(0)
    with pytest.warns(UserWarning, match="averaged"):
        r = pipe.extract(torch.stack([tone(), tone(f=220.0)]), "bass", generator=g)
    assert r["source"].shape == (1, 16000) and r["mels"].shape == (1, 2, 101, 64)
    torch.testing.assert_close(r["source"] + r["submix"], ((tone() + tone(f=220.0)) / 2)[None], atol=1e-4, rtol=0)
    with pytest.warns(UserWarning, match="resampled"):
        assert pipe.extract(tone(sr=44100), "piano", sr=44100, generator=g)["source"].shape == (1, 16000)
    with pytest.raises(ValueError, match="silent"): pipe.extract(torch.zeros(16000), "bass")
    with pytest.raises(ValueError, match="Close known labels"): pipe.extract(tone(), "kazoo")
    a = pipe.add_stem(torch.zeros(16000), "drums", generator=g)          # silence starts a song
    assert a["source"].shape == (1, 16000)
    with pytest.raises(ValueError, match="pieces of at most"): pipe.add_stem(tone(10.0), "bass")
    song = pipe.build_song(["drums", "bass"], 0.64, n=2, generator=g)
    assert song["stems"].shape == song["mixes"].shape == (2, 2, 10240)
    with pytest.raises(ValueError, match="Close known labels"): pipe.build_song(["drums", "kazoo"], 0.64)
    gen = pipe.generate(2, 0.64, "strings", generator=g)
    assert gen["source"].shape == (2, 10240) and gen["mels"].shape[1] == 3
    assert pipe.extract(tone(), torch.randn(1, 16), generator=g)["source"].shape == (1, 16000)   # a precomputed embedding


def test_save_load_files_and_other_kinds(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    back = MGELDM.from_pretrained(tmp_path / "model")
    a = pipe.extract(tone(), "bass", generator=torch.Generator().manual_seed(1))["mels"]
    torch.testing.assert_close(back.extract(tone(), "bass", generator=torch.Generator().manual_seed(1))["mels"], a)
    with pytest.raises(ValueError, match="class AutoencoderKL"): MGELDM.from_pretrained(tmp_path / "model" / "vae")
    (tmp_path / "ms").mkdir(); (tmp_path / "ms" / "msgld.json").write_text("{}")
    with pytest.raises(ValueError, match="MSG-LD pipeline"): MGELDM.from_pretrained(tmp_path / "ms")
    save_audio(tmp_path / "song.wav", torch.stack([tone(3.0, 44100), tone(3.0, 44100, 330.0)]), 44100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = extract_file(back, tmp_path / "song.wav", tmp_path / "out", "Electric Bass")
    assert any("resampled" in n for n in r["notes"]) and r["segments"] == 3
    names = sorted(p.name for p in r["folder"].iterdir())
    assert names == ["electric_bass.wav", "mix.wav", "submix.wav"]
    src, sub, mix = (load_audio(r["folder"] / n)[0][0] for n in ("electric_bass.wav", "submix.wav", "mix.wav"))
    assert src.shape == mix.shape == (48000,)
    torch.testing.assert_close(src + sub, mix, atol=1e-3, rtol=0)
    r = add_stem_file(back, tmp_path / "add", "drums", seconds=0.64)
    assert [p.name for p in r["files"]] == ["drums.wav", "mix.wav"]
    with pytest.raises(ValueError, match="Close known labels"): extract_file(back, tmp_path / "song.wav", tmp_path / "x", "kazoo")


def test_extract_w_is_the_models_default_and_travels_with_it(pipe, tmp_path):
    "The pipeline's extraction CFG weight is what `extract` uses when a call gives none, and it is saved and loaded."
    strong = MGELDM(pipe.vae, pipe.model, pipe.diffusion, segment_seconds=1.28, extract_w=3.0)
    used, sample = [], strong.sample
    def spy(*a, **kw): used.append(kw["guidance_w"]); return sample(*a, **kw)
    strong.sample = spy
    strong.extract(tone(), "bass"); strong.extract(tone(), "bass", guidance_w=1.0); strong.add_stem(tone(), "drums")
    assert used == [3.0, 1.0, None]                 # extraction: the model's extract_w; add_stem: the diffusion's own
    strong.save_pretrained(tmp_path / "m")
    assert MGELDM.from_pretrained(tmp_path / "m").extract_w == 3.0
    assert MGELDM.from_pretrained(pipe.save_pretrained(tmp_path / "p")).extract_w == 1.0      # the paper's: 1 is best
    with pytest.raises(ValueError, match="extract_w"): MGELDM(pipe.vae, pipe.model, extract_w=float("nan"))
    with pytest.raises(ValueError, match="extract_w"): MGELDMTraining.preset("tiny", extract_w=float("inf"))


def test_triplet_latents_roundtrip(tmp_path):
    lat = TripletLatents(torch.randn(2, 3, 8, 16, 16), ["Bass", "Organ"], crop=8)
    assert lat[1]["tracks"].shape == (3, 8, 8, 16) and lat[1]["label"] == "Organ"
    back = TripletLatents.load(lat.save(tmp_path / "t.safetensors"))
    assert back.labels == ["Bass", "Organ"] and torch.equal(back.tracks, lat.tracks)
    with pytest.raises(ValueError, match="one label each"): TripletLatents(torch.randn(2, 3, 8, 16, 16), ["Bass"])


def test_samplers_follow_the_authors_code_eta_zero_and_grid_to_0_02():
    slakh = MGELDMTraining.preset("slakh").diffusion
    assert (slakh.sampler, slakh.eta, slakh.t_end, slakh.steps) == ("ddim", 0.0, 0.02, 250)   # not MSG-LD's eta = 1
    default = MGELDM(AutoencoderKL(VAEConfig.preset("tiny")), TripletDenoiser(TripletConfig.preset("tiny")))
    assert (default.diffusion.eta, default.diffusion.t_end) == (0.0, 0.02)
    with pytest.raises(ValueError, match="sample_posterior is MSG-LD's"): MGELDMTraining.preset("tiny", sample_posterior=True)


def test_triplet_parts_load_without_the_pipeline_and_old_paths_still_work():
    import subprocess, sys
    import msg_edu.mgeldm as old, msg_edu.triplets as new
    code = ("import sys, msg_edu.triplets; print(sorted(m for m in ('msg_edu.mgeldm', 'msg_edu.latent', 'msg_edu.learner', "
            "'msg_edu.vocoder') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert len(new.__all__) == 11
    for name in set(new.__all__) - {"LABEL_KINDS"}: assert getattr(old, name) is getattr(new, name), name   # (new since)
    from msg_edu.mgeldm import LabelEncoder as old_enc, TripletDenoiser as old_den   # the old `from` form
    assert old_enc is new.LabelEncoder and old_den is new.TripletDenoiser


def test_clap_labels_train_end_to_end_and_extract_by_an_audio_example(toy, cache, tmp_path):
    "kind='clap': the joint embedder is trained first (out/clap), its space becomes the labels', queries by name or by clip."
    from msg_edu.cli import main
    from msg_edu.mgeldm import evaluate_extraction, train_mgeldm
    recipe = MGELDMTraining.preset("tiny", model=dict(label=dict(kind="clap")), clap=dict(train=dict(steps=10)))
    pipe, learn, metrics = train_mgeldm(toy, tmp_path / "run", recipe, cache_dir=cache, progress=False)
    joint = pipe.model.labels.joint
    assert (tmp_path / "run" / "clap" / "model" / "model.safetensors").is_file() and pipe.model.config.label.kind == "clap"
    assert pipe.model.config.label.dim == joint.config.dim == pipe.model.config.unet.label_dim
    assert not any(p.requires_grad for p in joint.parameters())
    lat = TripletLatents.load(next((tmp_path / "run" / "latents").glob("train_*_clap.safetensors")))
    assert lat.queries.shape == (len(lat), joint.config.dim)                  # each source's audio embedding, encoded once
    torch.testing.assert_close(lat.queries.norm(dim=-1), torch.ones(len(lat)))
    back = MGELDM.from_pretrained(tmp_path / "run" / "model")                 # the embedder travels inside the model
    torch.testing.assert_close(back.model.labels(["bass"]), pipe.model.labels(["bass"]))
    r = evaluate_extraction(back, toy, "test", segment_seconds=1.28, max_per_class=1, steps=2, cache_dir=cache, query="audio")
    assert r and all(v["n"] == 1 and math.isfinite(v["log_mel_l1"]) for v in r.values())
    save_audio(tmp_path / "mix.wav", tone(2.0, f=220) + tone(2.0, f=660), 16000)
    save_audio(tmp_path / "example.wav", tone(1.5, f=220), 16000)
    main(["extract", str(tmp_path / "mix.wav"), "--query-audio", str(tmp_path / "example.wav"), "--model",
          str(tmp_path / "run" / "model"), "--out", str(tmp_path / "x"), "--steps", "2"])
    assert (tmp_path / "x" / "mix" / "query_example.wav").is_file()
    assert main(["extract", str(tmp_path / "mix.wav"), "--model", str(tmp_path / "run" / "model"), "--out", str(tmp_path / "y")]) == 2
    with pytest.raises(ValueError, match="exactly one query"): extract_file(back, tmp_path / "mix.wav", tmp_path / "y")


def test_word_labels_refuse_audio_queries(pipe):
    with pytest.raises(ValueError, match="need a 'clap' label encoder"): pipe.query(tone(2.0), 16000)


def test_cli_set_changes_one_recipe_setting():
    from msg_edu.core import dotted_overrides as _settings   # what `msg-edu train --set` reads
    over = _settings(["model.label.kind=clap", "train.lr=1e-3", "class_balance=false"])
    assert over == {"model": {"label": {"kind": "clap"}}, "train": {"lr": 1e-3}, "class_balance": False}
    r = MGELDMTraining.preset("toy", **over)
    assert r.model.label.kind == "clap" and r.train.lr == 1e-3 and not r.class_balance and r.train.steps == 1000
    with pytest.raises(ValueError, match="KEY=VALUE"): _settings(["lr"])
    with pytest.raises(ValueError, match="has no field"): MGELDMTraining.preset("toy", **_settings(["train.lrr=1"]))
