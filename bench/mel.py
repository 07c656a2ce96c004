"""Benchmark: msg_edu's batched log-mel (MelFrontend) against librosa, same settings, same process.

16 clips x 10.24 s at 16 kHz, MusicLDM's settings (n_fft 1024, hop 160, 64 Slaney mels, log floor 1e-5),
2 CPU threads for everyone. Prints median times over several repeats and the ratios, plus the largest
log-mel difference to librosa (correctness of what was timed). Run: `.venv/bin/python bench/mel.py`.
"""
import argparse
import os
import platform
import statistics
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=7)
p.add_argument("--clips", type=int, default=16)
p.add_argument("--seconds", type=float, default=10.24)
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)  # before numpy/torch start their thread pools

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from msg_edu.audio import example_music  # noqa: E402
from msg_edu.mel import MelConfig, MelFrontend  # noqa: E402

torch.set_num_threads(args.threads)
cfg = MelConfig()
wave = torch.cat([example_music(args.seconds, sr=cfg.sr, seed=i) for i in range(args.clips)])  # (clips, N)
wave_np = wave.numpy()
front = MelFrontend(cfg)
mel_basis = librosa.filters.mel(sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)

def ours():
    with torch.no_grad(): return front(wave)

def with_librosa():
    S = np.abs(librosa.stft(wave_np, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                            center=True, pad_mode="reflect"))
    return np.log(np.maximum(np.einsum("mf,...ft->...tm", mel_basis, S, optimize=True), cfg.log_floor))

window, mel_t = torch.hann_window(cfg.n_fft), torch.from_numpy(mel_basis.T.copy())
def naive_torch():
    with torch.no_grad():
        S = torch.stft(wave, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect", return_complex=True)
        return (S.abs().transpose(-1, -2) @ mel_t).clamp(min=cfg.log_floor).log()

def median_time(fn):
    fn()  # warm up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times)

err = float(np.abs(ours().numpy() - with_librosa()).max())
t_lib, t_ours, t_naive = median_time(with_librosa), median_time(ours), median_time(naive_torch)
print(f"# log-mel benchmark: {args.clips} clips x {args.seconds} s at {cfg.sr} Hz, {args.threads} threads, "
      f"median of {args.repeats}")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
      f"librosa {librosa.__version__}, numpy {np.__version__}")
print(f"librosa (stft + mel + log)          {1e3 * t_lib:8.1f} ms   1.00x")
print(f"naive torch (torch.stft + abs + mm) {1e3 * t_naive:8.1f} ms   {t_lib / t_naive:.2f}x")
print(f"msg_edu MelFrontend                 {1e3 * t_ours:8.1f} ms   {t_lib / t_ours:.2f}x   (max |log-mel diff| {err:.1e})")
print(f"RESULT log-mel of {args.clips} x {args.seconds:g} s: MelFrontend {t_lib / t_ours:.2f}x librosa's speed "
      f"(naive torch.stft pipeline {t_lib / t_naive:.2f}x; target >= 2x)")
