"""Metrics against closed forms, MSDM's chunk protocol by hand, the VGGish loader, ToySlakh sanity, and `msg-edu eval`."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msg_edu.audio import save_audio
from msg_edu.data import MSDM_STEMS, SlakhIndex
from msg_edu.embedders import (VGGISH_SHAPES, InstrumentEmbedder, load_vggish, train_embedder, vggish_examples,
                               vggish_mel_matrix)
from msg_edu.evaluation import evaluate_dirs, sub_fad
from msg_edu.metrics import (ChunkedSISDRi, fad, frechet_distance, gaussian_stats, log_mel_l1, mel_metrics, mel_si_sdr,
                             msdm_chunks, msdm_si_sdri, si_sdr, si_sdr_improvement)
from msg_edu.toyslakh import make_toy_slakh

SR = 16000


# ---------------------------------------------------------------- SI-SDR
def closed_form_si_sdr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    "Le Roux et al.'s definition, without eps: project the estimate on the reference."
    proj = (est * ref).sum(-1, keepdims=True) / (ref ** 2).sum(-1, keepdims=True) * ref
    return 10 * np.log10((proj ** 2).sum(-1) / ((est - proj) ** 2).sum(-1))


@pytest.mark.parametrize("noise", [0.01, 0.3, 3.0])
def test_si_sdr_matches_closed_form_and_is_scale_invariant(noise):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((3, 2, 5000))
    est = ref + noise * rng.standard_normal(ref.shape) + 0.2 * np.roll(ref, 7, -1)
    ours = si_sdr(torch.from_numpy(est), torch.from_numpy(ref)).numpy()
    assert ours.shape == (3, 2)
    assert np.abs(ours - closed_form_si_sdr(est, ref)).max() < 1e-4
    for gain in (1e-4, 0.5, 30.0, -2.0):   # exact without eps; with MSDM's eps up to ~1e-6 dB for gains that keep the energy
        exact = si_sdr(torch.from_numpy(gain * est), torch.from_numpy(ref), eps=0.0).numpy()
        assert np.abs(exact - closed_form_si_sdr(est, ref)).max() < 1e-9
    assert np.abs(si_sdr(torch.from_numpy(5 * est), torch.from_numpy(ref)).numpy() - ours).max() < 1e-4
    centred = closed_form_si_sdr(est - est.mean(-1, keepdims=True), ref - ref.mean(-1, keepdims=True))
    assert np.abs(si_sdr(torch.from_numpy(est + 3), torch.from_numpy(ref - 1), zero_mean=True).numpy() - centred).max() < 1e-4


def test_si_sdr_keeps_float32_and_a_wrong_estimate_scores_low():
    g = torch.Generator().manual_seed(0)
    ref, other = torch.randn(2, 8000, generator=g)
    assert si_sdr(ref, ref).dtype == torch.float32 and float(si_sdr(ref, ref)) > 60
    assert float(si_sdr(other, ref)) < -20


def test_si_sdr_rejects_bad_input_with_advice():
    x = torch.randn(4, 100)
    with pytest.raises(ValueError, match="trim both to the shorter"): si_sdr(x, x[:, :99])
    with pytest.raises(ValueError, match="one estimate per reference"): si_sdr(x, x[:3])
    bad = x.clone(); bad[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"): si_sdr(bad, x)
    with pytest.raises(ValueError, match="at least 2"): si_sdr(torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match="floating-point"): si_sdr(torch.ones(10, dtype=torch.int16), torch.ones(10, dtype=torch.int16))


def test_si_sdr_improvement_of_the_mixture_is_zero_and_mix_broadcasts():
    g = torch.Generator().manual_seed(0)
    stems = torch.randn(2, 4, 3000, generator=g)
    mix = stems.sum(-2)
    assert torch.equal(si_sdr_improvement(mix[:, None].expand_as(stems), stems, mix), torch.zeros(2, 4))
    assert torch.allclose(si_sdr_improvement(stems, stems, mix), si_sdr_improvement(stems, stems, mix[:, None]))
    expected = si_sdr(stems + 0.1, stems) - si_sdr(mix[:, None].expand_as(stems), stems)
    assert torch.allclose(si_sdr_improvement(stems + 0.1, stems, mix), expected)
    with pytest.raises(ValueError, match="does not fit stems"): si_sdr_improvement(stems, stems, mix[:, :-1])


# ---------------------------------------------------------------- MSDM's protocol
def test_msdm_chunk_grid_by_hand():
    assert msdm_chunks(9000, 1000) == [(0, 4000), (2000, 6000), (4000, 8000), (6000, 9000)]   # ceil(7 / 2) = 4
    assert msdm_chunks(10000, 1000) == [(0, 4000), (2000, 6000), (4000, 8000), (6000, 10000)]  # ceil(8 / 2) = 4
    assert msdm_chunks(4500, 1000) == [(0, 4000), (2000, 4500)]                                 # ceil(2.5 / 2) = 2
    assert msdm_chunks(4000, 1000) == [(0, 4000)] and msdm_chunks(2000, 1000) == []
    assert len(msdm_chunks(22050 * 30, 22050)) == 14                                            # a 30 s song at 22.05 kHz
    with pytest.raises(ValueError, match="hop_seconds"): msdm_chunks(1000, 1000, 2.0, 3.0)


def hand_song(sr=1000):
    "9 s: A plays throughout, B from 6 s on, C never."
    t = torch.arange(9 * sr) / sr
    a = torch.sin(2 * math.pi * 50 * t)
    b = torch.where(t >= 6, 0.5 * torch.sin(2 * math.pi * 120 * t + 1), torch.zeros(()))
    return torch.stack([a, b, torch.zeros_like(a)])


def test_msdm_si_sdri_skips_chunks_with_at_most_one_source_as_computed_by_hand():
    ref = hand_song()
    est = ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    res = msdm_si_sdri(est, ref, sr=1000, stems=["A", "B", "C"], song="s")
    # chunks (0-4) and (2-6) hold only A (B starts at 6 s, the end is exclusive): skipped; (4-8) and (6-9) kept
    assert (res.n_chunks, res.n_kept, res.n_skipped) == (4, 2, 2)
    assert res.chunks == [("s", 4000, 8000), ("s", 6000, 9000)]
    for row, (_, start, end) in zip(res.values, res.chunks):
        direct = si_sdr_improvement(est[:, start:end], ref[:, start:end], ref[:, start:end].sum(0))
        assert torch.allclose(row, direct.float())
    means = res.mean()
    assert math.isclose(means["A"], float(res.values[:, 0].double().mean()), rel_tol=1e-6)
    assert math.isclose(means["All"], np.mean([means[k] for k in "ABC"]), rel_tol=1e-9)
    assert msdm_si_sdri(est, ref, sr=1000, filter_single_source=False).n_kept == 4
    # the silence threshold decides: B scaled by 1e-4 has ||x||/N below 1.5e-5 in every chunk, so no chunk has two sources
    quiet = ref.clone(); quiet[1] *= 1e-4
    with pytest.warns(UserWarning, match="adds nothing"):
        assert msdm_si_sdri(quiet, quiet, sr=1000).n_kept == 0


def test_msdm_si_sdri_pools_chunks_over_songs_and_reports_all_silent_songs():
    ref = hand_song()
    r1 = msdm_si_sdri(ref * 0.9 + 0.01, ref, sr=1000, song="one")
    r2 = msdm_si_sdri(ref.flip(-1) + 0.02, ref.flip(-1), sr=1000, song="two")
    pooled = ChunkedSISDRi.combine([r1, r2])
    assert pooled.n_kept == r1.n_kept + r2.n_kept and pooled.n_chunks == 8
    assert math.isclose(pooled.mean()["stem0"], float(torch.cat([r1.values, r2.values])[:, 0].double().mean()), rel_tol=1e-6)
    with pytest.warns(UserWarning, match="adds nothing"):
        silent = msdm_si_sdri(torch.zeros(3, 9000), torch.zeros(3, 9000), sr=1000)
    assert silent.n_kept == 0 and all(math.isnan(v) for v in silent.mean().values())
    assert ChunkedSISDRi.combine([r1, silent]).mean() == pytest.approx(r1.mean())   # an all-silent song changes nothing
    with pytest.raises(ValueError, match="not longer than the 2 s overlap"): msdm_si_sdri(ref[:, :1999], ref[:, :1999], sr=1000)
    with pytest.raises(ValueError, match="one song of stems"): msdm_si_sdri(ref[None], ref[None], sr=1000)
    with pytest.raises(ValueError, match="pass sr="): msdm_si_sdri(ref, ref)
    with pytest.raises(ValueError, match="trim them to one length"): msdm_si_sdri(ref, ref, ref.sum(0)[:-5], sr=1000)
    with pytest.raises(ValueError, match="trim both"): msdm_si_sdri(ref[:, :-1], ref, sr=1000)


# ---------------------------------------------------------------- mel metrics
def test_mel_metrics_against_their_formulas():
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(2, SR, generator=g)                      # white noise: no mel bin near the 1e-5 floor
    assert torch.allclose(log_mel_l1(0.5 * x, x, SR), torch.full((2,), math.log(2.0)), atol=1e-4)   # |log 0.5| everywhere
    a, b = torch.randn(3, 50, 64, generator=g), torch.randn(3, 50, 64, generator=g)
    m = mel_metrics(a, b)
    assert torch.allclose(m["log_mel_l1"], (a - b).abs().mean((-2, -1)))
    assert torch.allclose(m["mel_mse"], ((a - b) ** 2).mean((-2, -1)))
    assert np.allclose(m["mel_si_sdr"].numpy(), closed_form_si_sdr(a.flatten(-2).double().numpy(), b.flatten(-2).double().numpy()), atol=1e-4)
    assert torch.allclose(log_mel_l1(x, x, SR), torch.zeros(2)) and float(mel_si_sdr(x, x, SR).min()) > 60
    y44 = torch.randn(44100, generator=g) * 0.1                     # another rate is resampled to the front end's 16 kHz
    assert float(log_mel_l1(y44, y44, 44100)) == 0.0
    with pytest.raises(ValueError, match="trim both"): log_mel_l1(x[:, :-10], x, SR)


# ---------------------------------------------------------------- Fréchet distance and FAD
def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(3)
    d = 12
    a, b = torch.rand(d, generator=g, dtype=torch.float64) + 0.05, torch.rand(d, generator=g, dtype=torch.float64) * 3
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    closed = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(closed, rel=1e-6)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    rotated = frechet_distance(q @ mu1, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T)
    assert rotated == pytest.approx(closed, rel=1e-6)
    for theta in (0.3, 1.1, 2.5):                                     # a non-commuting 2-D pair: tr sqrt(A) = sqrt(tr A + 2 sqrt(det A))
        r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
        s1, s2 = torch.diag(torch.tensor([2.0, 0.1], dtype=torch.float64)), r @ torch.diag(torch.tensor([0.7, 0.05], dtype=torch.float64)) @ r.T
        m = torch.tensor([0.3, -0.2], dtype=torch.float64)
        tr_sqrt = math.sqrt(float((s1 @ s2).trace()) + 2 * math.sqrt(float(torch.linalg.det(s1) * torch.linalg.det(s2))))
        expected = float((m ** 2).sum() + s1.trace() + s2.trace()) - 2 * tr_sqrt
        assert frechet_distance(m, s1, torch.zeros(2), s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 20, generator=g, dtype=torch.float64), torch.randn(300, 20, generator=g, dtype=torch.float64) * 1.5 + 0.2
    (m1, s1), (m2, s2) = gaussian_stats(x), gaussian_stats(y)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float(((m1 - m2) ** 2).sum()) + float(np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)
    assert torch.allclose(s1, torch.from_numpy(np.cov(x.numpy(), rowvar=False)))   # the usual (unbiased) covariance


def test_fad_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, b = (torch.randn(40_000, 6, generator=g, dtype=torch.float64) @ mix for _ in range(2))
    assert fad(a, b) < 5e-3
    shift = torch.linspace(-1, 1, 6, dtype=torch.float64)             # a shift adds ||c||^2 + 2 c . (mu_b - mu_a), covariances unchanged
    expected = fad(a, b) + float(shift @ shift + 2 * shift @ (b.mean(0) - a.mean(0)))
    assert fad(a, b + shift) == pytest.approx(expected, rel=1e-9)
    assert fad(a, 2 * b) > 1.0


def test_fad_bad_input():
    with pytest.raises(ValueError, match="at least 2 embeddings"): fad(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="same model"): fad(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="NaN"): fad(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.randn(5, 2))
    with pytest.warns(UserWarning, match="singular"): fad(torch.randn(4, 8), torch.randn(20, 8))
    with pytest.raises(ValueError, match="not symmetric"): frechet_distance(torch.zeros(2), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="negative eigenvalues"): frechet_distance(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="covariance to match"): frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


# ---------------------------------------------------------------- VGGish
def tf_mel_matrix(num_mel_bins=64, num_spectrogram_bins=257, sr=16000, lo=125.0, hi=7500.0):
    "TensorFlow's mel_features.spectrogram_to_mel_matrix, written out as the release does it (loop over bands)."
    hz_to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    bins_mel = hz_to_mel(np.linspace(0.0, sr / 2, num_spectrogram_bins))
    edges = np.linspace(hz_to_mel(lo), hz_to_mel(hi), num_mel_bins + 2)
    w = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lower, center, upper = edges[i:i + 3]
        w[:, i] = np.maximum(0.0, np.minimum((bins_mel - lower) / (center - lower), (upper - bins_mel) / (upper - center)))
    w[0, :] = 0.0
    return w


def test_vggish_front_end_follows_the_tensorflow_release():
    assert np.allclose(vggish_mel_matrix().numpy(), tf_mel_matrix(), atol=1e-6)
    x = 0.1 * torch.randn(1, 2 * SR, generator=torch.Generator().manual_seed(0))
    ex = vggish_examples(x)
    assert ex.shape == (1, 2, 96, 64)                                  # (2 s - 25 ms) / 10 ms + 1 = 198 frames -> 2 patches
    sig = x[0].double().numpy()                                        # one frame by hand: periodic Hann, 512-point rfft, log(mel + 0.01)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frame_100 = np.abs(np.fft.rfft(sig[100 * 160: 100 * 160 + 400] * win, 512))
    assert np.allclose(ex[0, 1, 4].numpy(), np.log(frame_100 @ tf_mel_matrix() + 0.01), atol=1e-5)


def test_vggish_loader_round_trip_and_refusals(tmp_path):
    g = torch.Generator().manual_seed(0)
    public = {k: torch.randn(s, generator=g) * 0.02 for k, s in VGGISH_SHAPES.items()}
    torch.save(public, tmp_path / "vggish.pth")
    model = load_vggish(tmp_path / "vggish.pth")
    assert list(model.state_dict()) == list(VGGISH_SHAPES)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in public.items())
    clip = 0.1 * torch.randn(3 * SR, generator=g)
    emb = model.embed(clip, SR)
    assert emb.shape == (3, 128)
    # the same numbers by hand from the public layout: features, channels-last flatten, the linears (no final ReLU)
    x = vggish_examples(clip[None])[0, :, None]
    h = x
    for i in (0, 3, 6, 8, 11, 13):
        h = torch.relu(torch.nn.functional.conv2d(h, public[f"features.{i}.weight"], public[f"features.{i}.bias"], padding=1))
        if i in (0, 3, 8, 13): h = torch.nn.functional.max_pool2d(h, 2)
    h = h.permute(0, 2, 3, 1).reshape(len(h), -1)
    h = torch.relu(h @ public["embeddings.0.weight"].T + public["embeddings.0.bias"])
    h = torch.relu(h @ public["embeddings.2.weight"].T + public["embeddings.2.bias"])
    assert torch.allclose(emb, h @ public["embeddings.4.weight"].T + public["embeddings.4.bias"], atol=1e-4)
    torch.save({**public, "pproc.pca_matrix": torch.eye(128), "pproc.pca_means": torch.zeros(128, 1)}, tmp_path / "full.pth")
    assert torch.equal(load_vggish(tmp_path / "full.pth").embed(clip, SR), emb)   # torchvggish's PCA parameters are ignored
    renamed = {("embeddings.4.w" if k == "embeddings.4.weight" else k): v for k, v in public.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing \['embeddings.4.weight'\], unexpected \['embeddings.4.w'\]"):
        load_vggish(tmp_path / "renamed.pth")
    torch.save({**public, "features.0.weight": torch.zeros(32, 1, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"features.0.weight \(32, 1, 3, 3\) vs \(64, 1, 3, 3\)"):
        load_vggish(tmp_path / "shape.pth")
    torch.save({"features.0.weight": os.system}, tmp_path / "code.pth")   # unpickling it would import os.system
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"): load_vggish(tmp_path / "code.pth")
    with pytest.raises(FileNotFoundError, match="never downloads"): load_vggish(tmp_path / "absent.pth")


# ---------------------------------------------------------------- ToySlakh sanity
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    "80 ToySlakh songs of 3 s at 16 kHz and an embedder trained on them with the tiny recipe (~20 s on 2 cores)."
    base = tmp_path_factory.mktemp("toy")
    root = make_toy_slakh(base / "data", n_tracks=80, sr=SR, seconds=3.0, n_omitted=0, fmt="wav", seed=2)
    cache = base / "cache"
    model, learn, metrics = train_embedder(root, base / "embedder", "tiny", progress=False, cache_dir=cache, seed=0)

    def songs(split):
        idx = SlakhIndex(root, split, stems=MSDM_STEMS, missing="zero", cache_dir=cache)
        return torch.stack([torch.from_numpy(np.stack([idx.load(t, c) for c in idx.classes])) for t in idx.tracks])
    return dict(root=root, base=base, cache=cache, model=model, metrics=metrics,
                train=songs("train"), held_out=torch.cat([songs("validation"), songs("test")]),
                test=SlakhIndex(root, "test", stems=MSDM_STEMS, cache_dir=cache))


def shuffled_across_songs(x):
    n = len(x)
    return torch.stack([x[(torch.arange(n) + s) % n, s] for s in range(x.shape[1])], dim=1)


def test_embedder_learns_instruments_and_round_trips(toy):
    m = toy["metrics"]
    assert m["accuracy"] > 0.8 and m["chance"] < 0.4 and m["coherence_accuracy"] > 0.55
    loaded = InstrumentEmbedder.from_pretrained(toy["base"] / "embedder")
    x = toy["held_out"][:2].sum(1)
    assert torch.equal(loaded.embed(x, SR), toy["model"].embed(x, SR))
    assert json.loads((toy["base"] / "embedder" / "metrics.json").read_text())["classes"] == m["classes"]
    with pytest.raises(FileExistsError, match="resume=True"):
        train_embedder(toy["root"], toy["base"] / "embedder", "tiny", progress=False, cache_dir=toy["cache"])


def test_toyslakh_si_sdri_sanity(toy):
    idx = toy["test"]
    songs = [torch.from_numpy(np.stack([idx.load(t, c) for c in idx.classes])) for t in idx.tracks]
    g = torch.Generator().manual_seed(0)
    def score(make): return ChunkedSISDRi.combine([msdm_si_sdri(make(s), s, sr=SR, song=str(i)) for i, s in enumerate(songs)])
    oracle, mixture = score(lambda s: s), score(lambda s: s.sum(0).expand_as(s))
    noise = score(lambda s: torch.randn(s.shape, generator=g) * s.std(-1, keepdim=True))
    assert oracle.n_kept >= 1 and oracle.n_kept == mixture.n_kept == noise.n_kept
    assert min(oracle.mean().values()) >= 40
    assert all(abs(v) < 1e-6 for v in mixture.mean().values())
    assert max(noise.mean().values()) < -10 and noise.mean()["All"] < -20


def test_toyslakh_fad_orders_real_shuffled_and_noise(toy):
    model, ref, held = toy["model"], toy["train"], toy["held_out"]
    e_ref = model.embed(ref.sum(1), SR)
    noise = torch.randn(held.sum(1).shape, generator=torch.Generator().manual_seed(0)) * held.sum(1).std(-1, keepdim=True)
    f_real = fad(e_ref, model.embed(held.sum(1), SR))
    f_shuffled = fad(e_ref, model.embed(shuffled_across_songs(held).sum(1), SR))
    f_noise = fad(e_ref, model.embed(noise, SR))
    assert f_real < f_shuffled < f_noise and f_real < f_noise / 5, (f_real, f_shuffled, f_noise)
    # sub-FAD: the real stem gives 0 (up to rounding); another song's stems, incoherent with the given ones, do not:
    # they land between the real songs and noise
    other = held.roll(1, 0)
    assert sub_fad(model, held, held, [2], SR) < 1e-6
    assert f_real / 10 < sub_fad(model, held, other, [2, 3], SR) < f_noise
    with pytest.raises(ValueError, match="is empty"): sub_fad(model, held, other, [], SR)
    with pytest.raises(ValueError, match="one estimate per reference"): sub_fad(model, held, other[:, :3], [0], SR)


# ---------------------------------------------------------------- msg-edu eval
def write_layout(folder: Path, songs: dict, sr: int = SR):
    for song, stems in songs.items():
        for name, x in stems.items(): save_audio(folder / song / f"{name}.wav", x, sr, subtype="FLOAT")


def run_cli(*args):
    exe = Path(sys.executable).parent / "msg-edu"
    return subprocess.run([str(exe), "eval", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_eval_separation_and_generation(toy, tmp_path, capsys):
    idx = toy["test"]
    songs = {t.name: {c.lower(): torch.from_numpy(idx.load(t, c)) for c in idx.classes} for t in idx.tracks}
    write_layout(tmp_path / "ref", songs)
    write_layout(tmp_path / "oracle", songs)
    noise = {k: {s: 0.1 * torch.randn(len(x)) for s, x in v.items()} for k, v in songs.items()}
    write_layout(tmp_path / "noise", noise)
    res = run_cli("--task", "separation", "--pred", tmp_path / "oracle", "--ref", tmp_path / "ref")
    assert res.returncode == 0, res.stderr
    assert "| SI-SDRi (dB) |" in res.stdout and "| Log-Mel L1 |" in res.stdout
    report = json.loads((tmp_path / "oracle" / "metrics_separation.json").read_text())
    assert report["table"]["SI-SDRi (dB)"]["All"] >= 40 and report["table"]["Log-Mel L1"]["All"] == 0.0
    assert report["stems"] == list(MSDM_STEMS) and set(report["songs"]) == set(songs)
    rows = (tmp_path / "oracle" / "metrics_separation.csv").read_text().splitlines()
    assert rows[0] == "metric,bass,drums,guitar,piano,All" and len(rows) == 5
    res = run_cli("--task", "separation", "--pred", tmp_path / "noise", "--ref", tmp_path / "ref", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "metrics_separation.json").read_text())["table"]["SI-SDRi (dB)"]["All"] < -10
    res = run_cli("--task", "generation", "--pred", tmp_path / "noise", "--ref", tmp_path / "ref", "--embedder", toy["base"] / "embedder",
                  "--given", "bass,drums")
    assert res.returncode == 0, res.stderr
    gen = json.loads((tmp_path / "noise" / "metrics_generation.json").read_text())
    assert set(gen["table"]["FAD"]) == {*MSDM_STEMS, "mix"} and gen["table"]["sub-FAD (given: bass, drums)"]["mix"] > 0
    # bad input, through the same entry point in-process (status 2, one line on stderr)
    from msg_edu.cli import main
    one = next(iter(songs))
    write_layout(tmp_path / "partial", {one: songs[one]})
    write_layout(tmp_path / "short", {k: {s: x[:-100] for s, x in v.items()} for k, v in songs.items()})
    ref = ["--ref", str(tmp_path / "ref")]
    for task, pred, extra, message in [("separation", "partial", [], "have no folder in"),
                                       ("separation", "short", [], "--trim"),
                                       ("separation", "does_not_exist", [], "is not a folder"),
                                       ("separation", "noise", ["--vggish", str(tmp_path / "none.pth")], "belong to --task generation"),
                                       ("generation", "noise", [], "exactly one embedder"),
                                       ("generation", "noise", ["--vggish", str(tmp_path / "none.pth")], "never downloads")]:
        assert main(["eval", "--task", task, "--pred", str(tmp_path / pred), *ref, *extra]) == 2
        assert message in capsys.readouterr().err, (task, pred, message)
    assert main(["eval", "--task", "separation", "--pred", str(tmp_path / "short"), *ref, "--trim"]) == 0
    assert "'songs trimmed': " in capsys.readouterr().out


def test_evaluate_dirs_zero_fills_missing_reference_stems_and_reports_silent_songs(tmp_path):
    t = torch.arange(5 * SR) / SR
    tones = {s: 0.2 * torch.sin(2 * math.pi * 110 * (k + 1) * t) for k, s in enumerate(MSDM_STEMS)}
    quiet = {"bass": tones["bass"], "drums": torch.zeros_like(t)}           # one active stem: MSDM skips every chunk
    write_layout(tmp_path / "ref", {"song1": tones, "song2": quiet})
    write_layout(tmp_path / "pred", {"song1": tones, "song2": {**quiet, "guitar": torch.zeros_like(t), "piano": torch.zeros_like(t)}})
    with pytest.warns(UserWarning, match="adds nothing"):
        report = evaluate_dirs("separation", tmp_path / "pred", tmp_path / "ref")
    assert report["counts"]["reference stems zero-filled"] == 2
    assert report["counts"]["chunks"] == 4 and report["counts"]["chunks_kept"] == 2   # 5 s: ceil(3 / 2) = 2 chunks per song
    assert report["table"]["SI-SDRi (dB)"]["All"] >= 40
    saved = json.loads((tmp_path / "pred" / "metrics_separation.json").read_text())
    assert saved["songs"]["song2"]["bass"]["si_sdri"] is None                  # NaN is written as null: strict JSON
    assert math.isnan(report["songs"]["song2"]["bass"]["si_sdri"])


# ---------------------------------------------------------------- old import paths
def test_moved_names_still_import_from_metrics():
    "Names that moved to embedders/evaluation in the module split keep their old path for a release."
    import msg_edu.embedders, msg_edu.evaluation, msg_edu.metrics
    from msg_edu.metrics import EVAL_LAYOUT, train_embedder as old  # noqa: F401  (the old spelling)
    assert old is msg_edu.embedders.train_embedder
    for name, module in msg_edu.metrics._MOVED.items():
        assert getattr(msg_edu.metrics, name) is getattr(getattr(msg_edu, module), name)
    with pytest.raises(AttributeError, match="no_such_name"): msg_edu.metrics.no_such_name
