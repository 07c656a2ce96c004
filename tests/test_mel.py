"""The mel front end against librosa (the oracle) over several parameter sets, and its bad inputs."""
import librosa
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from msg_edu.audio import example_music, snr_db
from msg_edu.mel import (MelConfig, MelFrontend, griffin_lim, istft, magnitude, mel_filterbank, mel_to_wave,
                         spectral_convergence, stft)

FILTERBANKS = [dict(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0),
               dict(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0),
               dict(sr=44100, n_fft=2048, n_mels=128, fmin=30.0, fmax=16000.0),
               dict(sr=16000, n_fft=512, n_mels=40, htk=True),
               dict(sr=16000, n_fft=1024, n_mels=64, norm=None),
               dict(sr=8000, n_fft=256, n_mels=20, fmin=100.0, htk=True, norm=None)]


@pytest.mark.parametrize("params", FILTERBANKS)
def test_filterbank_matches_librosa(params):
    ours, ref = mel_filterbank(**params).numpy(), librosa.filters.mel(**params)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


STFTS = [dict(n_fft=1024, hop_length=160, win_length=1024), dict(n_fft=512, hop_length=128, win_length=400),
         dict(n_fft=2048, hop_length=512, win_length=2048), dict(n_fft=256, hop_length=64, win_length=256, center=False)]


@pytest.mark.parametrize("params", STFTS)
def test_stft_matches_librosa_and_inverts(params):
    x = torch.cat([example_music(1.5)[0], 0.1 * torch.randn(8000)])
    ours = stft(x, **params)
    ref = librosa.stft(x.numpy(), pad_mode="reflect", **params).T
    assert ours.shape == ref.shape and ours.dtype == torch.complex64
    assert np.abs(np.abs(ours.numpy()) - np.abs(ref)).max() / np.abs(ref).max() < 1e-4
    center = params.get("center", True)
    y = istft(ours, hop_length=params["hop_length"], win_length=params["win_length"], center=center, length=len(x))
    lo, hi = (0, len(x)) if center else (params["n_fft"], len(x) - params["n_fft"])
    assert snr_db(y[lo:hi], x[lo:hi]) >= 80


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1024, 6000), hop=st.sampled_from([128, 160, 256]), win=st.sampled_from([512, 800, 1024]))
def test_istft_round_trip_any_length(n, hop, win):
    x = torch.randn(2, n) * 0.1
    y = istft(stft(x, 1024, hop, win), hop_length=hop, win_length=win, length=n)
    assert y.shape == x.shape and snr_db(y, x) >= 80


LOGMELS = [MelConfig(), MelConfig(n_mels=128), MelConfig(n_fft=512, win_length=400, hop_length=128, fmin=50.0, htk=True),
           MelConfig(center=False, norm=None, fmax=7000.0), MelConfig(sr=22050, n_mels=80, fmax=11025.0, hop_length=256)]


def librosa_log_mel(y: np.ndarray, c: MelConfig) -> np.ndarray:
    S = np.abs(librosa.stft(y, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length, center=c.center,
                            pad_mode=c.pad_mode))
    fb = librosa.filters.mel(sr=c.sr, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax, htk=c.htk, norm=c.norm)
    return np.log(np.maximum(fb @ S, c.log_floor)).swapaxes(-1, -2)


@pytest.mark.parametrize("cfg", LOGMELS)
def test_log_mel_matches_librosa(cfg):
    # music, a quiet passage near the floor (where float32 FFTs go wrong) and noise; (B, S, N) layout
    x = torch.stack([example_music(2.0)[0], 0.01 * example_music(2.0, seed=1)[0], 0.1 * torch.randn(32000)])[None]
    ours = MelFrontend(cfg)(x)
    ref = librosa_log_mel(x.numpy(), cfg)
    assert ours.shape == ref.shape == (1, 3, cfg.n_frames(32000), cfg.n_mels)
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_log_mel_fast_path_equals_autograd_path():
    front = MelFrontend()
    x = example_music(2.0).requires_grad_()
    with_grad = front(x)
    with_grad.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(with_grad.detach(), front(x.detach()), rtol=0, atol=1e-5)


def test_griffin_lim_converges_like_librosa():
    x = example_music(3.0)[0]
    S = magnitude(stft(x, 1024, 160))
    history = []
    y = griffin_lim(S, n_iter=32, init="zeros", length=len(x), callback=lambda i, sc: history.append(float(sc)))
    y_lib = librosa.griffinlim(S.T.numpy(), n_iter=32, hop_length=160, n_fft=1024, init=None, momentum=0.99,
                               pad_mode="reflect", length=len(x))
    sc_ours = float(spectral_convergence(S, stft(y, 1024, 160)))
    sc_lib = float(spectral_convergence(S, stft(torch.from_numpy(y_lib), 1024, 160)))
    assert sc_ours <= 1.1 * sc_lib
    assert history[-1] < history[8] < history[0] and sc_ours < history[0] / 4


def test_mel_to_wave_reconstructs():
    x = example_music(2.0)
    front = MelFrontend()
    y = mel_to_wave(front(x), n_iter=32, length=x.shape[-1], generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert float((front(y) - front(x)).abs().mean()) < 0.5


def test_bad_inputs_name_the_argument():
    front = MelFrontend()
    with pytest.raises(ValueError, match="fewer than n_fft=1024"): front(torch.zeros(1, 1000))
    with pytest.raises(ValueError, match="fewer than n_fft=512"): stft(torch.zeros(100), n_fft=512)
    with pytest.raises(ValueError, match="NaN"): front(torch.tensor([[float("nan")] * 4096]))
    with pytest.raises(ValueError, match="Inf"): stft(torch.full((2048,), float("inf")))
    with pytest.raises(ValueError, match=r"resample\(wave, 44100, 16000\)"): front(torch.zeros(1, 4096), sr=44100)
    with pytest.raises(ValueError, match="at least 1 dimensions"): front(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least 2 dimensions"): griffin_lim(torch.zeros(513))
    with pytest.raises(TypeError, match="floating-point"): front(torch.zeros(1, 4096, dtype=torch.int16))
    with pytest.raises(ValueError, match="time-major"): mel_to_wave(torch.zeros(64, 200))
    with pytest.raises(ValueError, match="fmax <= sr/2"): MelConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="fmax <= sr/2"): mel_filterbank(16000, 1024, 64, fmax=12000.0)
