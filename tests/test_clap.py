"""The joint audio-text embedder (chapter 09f): unit embeddings, the loss against its closed form, training that
brings a class's text and audio together on held-out stems, helpful refusals, and a lossless save/load."""
import contextlib
import math

import pytest
import torch

from msg_edu.clap import (ClapConfig, ClapTraining, JointEmbedder, bag_of_words, clap_vocabulary, contrastive_loss,
                          retrieval_accuracy, train_clap)
from msg_edu.core import MsgEduError


@pytest.fixture(scope="module")
def trained(toy, cache, tmp_path_factory):
    "The tiny recipe trained on the tiny ToySlakh once for this module: (model, run folder, metrics)."
    out = tmp_path_factory.mktemp("clap") / "run"
    model, _, metrics = train_clap(toy, out, "tiny", cache_dir=cache, progress=False)
    return model, out, metrics


def test_embeddings_are_unit_vectors_of_any_input_layout():
    model = JointEmbedder(ClapConfig.preset("tiny"))
    g = torch.Generator().manual_seed(0)
    text = model.embed_text(["bass", "Synth Lead", "Electric Piano 1"])
    assert text.shape == (3, 32) and torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    for wave, n in ((torch.randn(24000, generator=g), 1), (torch.randn(2, 44100, generator=g), 1),
                    (torch.randn(3, 1, 40000, generator=g), 3)):
        with pytest.warns(UserWarning) if wave.ndim == 2 else contextlib.nullcontext():
            audio = model.embed_audio(0.1 * wave, 44100 if wave.ndim == 2 else 16000)
        assert audio.shape == (n, 32) and torch.allclose(audio.norm(dim=-1), torch.ones(n), atol=1e-5)
    mel = model.embed_mels(torch.randn(4, 128, 64, generator=g))
    assert torch.allclose(mel.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_embed_audio_averages_windows_of_a_long_clip():
    "A long clip is the normalised mean of its windows: a clip made of one window repeated embeds like that window."
    model = JointEmbedder(ClapConfig.preset("tiny")).eval()
    n = (model.config.window_frames - 1) * model.front.config.hop_length
    window = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(1))
    one = model.embed_audio(window, 16000)
    long = model.embed_audio(window.repeat(4)[: 3 * n], 16000)
    assert torch.nn.functional.cosine_similarity(one, long).item() > 0.95


def test_loss_matches_its_closed_form():
    "Aligned one-hot embeddings at scale s: every row's softmax puts e^s on the diagonal and 1 on the B - 1 others."
    B, s = 4, 10.0
    a = torch.eye(B, 8, dtype=torch.float64)
    loss = contrastive_loss(a, a.clone(), torch.tensor(s))
    assert math.isclose(loss.item(), -math.log(math.exp(s) / (math.exp(s) + B - 1)), rel_tol=1e-9)
    # a batch with two stems of one class: those rows share their positives (half the target on each)
    labels = torch.tensor([0, 0, 1, 2])
    text = torch.eye(B, 8, dtype=torch.float64)
    logits = s * a @ text.T
    lsm = logits.log_softmax(1)
    by_hand = -(lsm[0, 0] + lsm[0, 1]) / 2, -(lsm[1, 0] + lsm[1, 1]) / 2, -lsm[2, 2], -lsm[3, 3]
    assert torch.isclose(contrastive_loss(a, text, s, labels), sum(by_hand) / B, atol=1e-6)   # symmetric: a = text
    # random embeddings: the loss is the mean of the two cross-entropies, each as torch computes it
    g = torch.Generator().manual_seed(0)
    x, y = (torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1) for _ in range(2))
    ce = torch.nn.functional.cross_entropy
    want = (ce(3 * x @ y.T, torch.arange(6)) + ce(3 * y @ x.T, torch.arange(6))) / 2
    assert torch.isclose(contrastive_loss(x, y, 3.0), want, atol=1e-6)


def test_training_brings_a_class_s_text_and_audio_together(trained, toy, cache):
    model, out, metrics = trained
    assert metrics["steps"] == ClapTraining.preset("tiny").train.steps
    r = retrieval_accuracy(model, toy, "test", cache_dir=cache, segment_seconds=1.28)
    assert r["mean"]["audio_to_text"] > r["chance"]["audio_to_text"] + 0.2, r
    assert r["mean"]["text_to_audio"] > r["chance"]["text_to_audio"] + 0.2, r
    sim = torch.tensor(r["similarity"])                # (audio class, text class): the diagonal stands out
    assert sim.diagonal().mean() > sim.masked_fill(torch.eye(len(sim), dtype=torch.bool), float("nan")).nanmean() + 0.2


def test_save_load_round_trip_gives_identical_embeddings(trained):
    model, out, _ = trained
    loaded = JointEmbedder.from_pretrained(out / "model")
    assert loaded.config == model.config and loaded.vocabulary == model.vocabulary
    wave = 0.1 * torch.randn(1, 1, 30000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded.embed_audio(wave, 16000), model.embed_audio(wave, 16000))
    assert torch.equal(loaded.embed_text(["bass", "drums"]), model.embed_text(["bass", "drums"]))
    assert torch.equal(loaded.logit_scale, model.logit_scale)


def test_bad_inputs_fail_with_helpful_messages(toy, tmp_path):
    model = JointEmbedder(ClapConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"unknown label 'bas'.*Close known labels: \[.*'Bass'"):
        model.embed_text("bas")
    with pytest.raises(ValueError, match="empty label"): model.embed_text("  ")
    with pytest.raises(ValueError, match="no labels"): model.embed_text([])
    with pytest.raises(MsgEduError, match="at least 1.0 s"): model.embed_audio(0.1 * torch.randn(8000), 16000)
    with pytest.raises(MsgEduError, match="silent"): model.embed_audio(torch.zeros(32000), 16000)
    with pytest.raises(MsgEduError, match="NaN"): model.embed_audio(torch.full((32000,), float("nan")), 16000)
    with pytest.raises(ValueError, match="bins"): model.embed_mels(torch.randn(2, 128, 80))
    with pytest.raises(ValueError, match="lower-case words"): ClapConfig(vocabulary=("Bass",))
    with pytest.raises(ValueError, match="no preset"): ClapTraining.preset("huge")
    with pytest.raises(MsgEduError, match="no dataset"): train_clap(tmp_path / "nowhere", tmp_path / "run", "tiny")
    with pytest.raises(TypeError, match="JointEmbedder"): retrieval_accuracy(object(), toy)
    assert bag_of_words("Electric Bass (slap)", clap_vocabulary()).sum().item() == pytest.approx(1.0)
