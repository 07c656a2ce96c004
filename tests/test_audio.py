"""Audio I/O and the resampler: round trips, the analytic-signal check, and bad inputs."""
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings, strategies as st

from conftest import sines
from msg_edu.audio import example_music, load_audio, resample, save_audio, snr_db


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (48000, 16000), (16000, 44100), (16000, 48000)])
def test_resample_matches_analytic_sines(orig, new):
    y = resample(sines(orig), orig, new)
    ref = sines(new)
    assert y.shape == ref.shape
    edge = new // 10  # 0.1 s: away from the zero-padded edges
    assert snr_db(y[edge:-edge], ref[edge:-edge]) >= 60


def test_resample_rejects_aliases():
    t = torch.arange(48000, dtype=torch.float64) / 48000
    tone_10k = torch.sin(2 * np.pi * 10000 * t).float()  # cannot exist at 16 kHz
    y = resample(tone_10k, 48000, 16000)
    assert float(y[1600:-1600].abs().max()) < 1e-4


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5000), rates=st.sampled_from([(44100, 16000), (22050, 16000), (16000, 22050), (3, 2), (16000, 16000)]))
def test_resample_length_and_batching(n, rates):
    orig, new = rates
    x = torch.randn(2, 3, n)
    y = resample(x, orig, new)
    assert y.shape == (2, 3, -(-n * new // orig))
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], orig, new))  # rows are independent


def test_resample_bad_input():
    with pytest.raises(TypeError, match="orig_sr` must be an integer"): resample(torch.zeros(10), 44100.5, 16000)
    with pytest.raises(ValueError, match="new_sr` must be >= 1"): resample(torch.zeros(10), 44100, 0)
    with pytest.raises(ValueError, match="NaN"): resample(torch.tensor([0.0, float("nan")]), 44100, 16000)


@pytest.mark.parametrize("suffix,subtype,tol", [(".wav", None, 2**-15), (".flac", None, 2**-15), (".wav", "FLOAT", 0.0)])
@pytest.mark.parametrize("channels", [1, 2, 4])
def test_save_load_round_trip(tmp_path, suffix, subtype, tol, channels):
    wave = torch.cat([example_music(1.0, seed=c) for c in range(channels)])
    path = save_audio(tmp_path / f"x{suffix}", wave, 16000, subtype=subtype)
    back, sr = load_audio(path)
    assert sr == 16000 and back.shape == wave.shape and back.dtype == torch.float32
    assert float((back - wave).abs().max()) <= tol
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temp file


def test_load_window_mono_and_resample(tmp_path):
    wave = torch.stack([sines(44100, 1.0), sines(44100, 1.0, seed=1)])
    save_audio(tmp_path / "s.wav", wave, 44100, subtype="FLOAT")
    part, sr = load_audio(tmp_path / "s.wav", offset=0.5, duration=0.25)
    assert sr == 44100 and torch.equal(part, wave[:, 22050:22050 + 11025])
    mono, _ = load_audio(tmp_path / "s.wav", mono=True)
    torch.testing.assert_close(mono[0], wave.mean(0))
    at16, sr16 = load_audio(tmp_path / "s.wav", sr=16000)
    assert sr16 == 16000 and at16.shape == (2, 16000)
    assert snr_db(at16[0, 1600:-1600], sines(16000, 1.0)[1600:-1600]) >= 60


def test_load_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"): load_audio(tmp_path / "nope.flac")
    (tmp_path / "bad.flac").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="could not decode"): load_audio(tmp_path / "bad.flac")
    with pytest.raises(IsADirectoryError): load_audio(tmp_path)
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN"): load_audio(tmp_path / "nan.wav")
    save_audio(tmp_path / "short.wav", torch.zeros(100), 16000)
    with pytest.raises(ValueError, match="no samples in the requested range"): load_audio(tmp_path / "short.wav", offset=1.0)


def test_save_bad_input(tmp_path):
    with pytest.raises(ValueError, match="suffix"): save_audio(tmp_path / "x.mp3", torch.zeros(10), 16000)
    with pytest.raises(ValueError, match="pass wave.T"): save_audio(tmp_path / "x.wav", torch.zeros(1000, 2), 16000)
    with pytest.raises(ValueError, match="must have 1 or 2 dimensions"): save_audio(tmp_path / "x.wav", torch.zeros(1, 2, 3), 16000)
    with pytest.raises(ValueError, match="Inf"): save_audio(tmp_path / "x.wav", torch.tensor([float("inf")]), 16000)
    with pytest.warns(UserWarning, match="2 samples outside"): save_audio(tmp_path / "x.wav", torch.tensor([0.0, 1.5, -2.0]), 16000)
