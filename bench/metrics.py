"""Benchmark: chapter 09's metrics. Fréchet distance accuracy and speed against the usual scipy `sqrtm` recipe, and
the throughput of MSDM's SI-SDRi protocol and of the two FAD embedders.

Fréchet distance: two covariances that commute (both diagonal in one random orthogonal basis), so that the exact
distance is known in closed form, with eigenvalues spread over `--decades` decades (near-singular, as covariances
estimated from fewer clips than dimensions are). Ours (`msg_edu.metrics.frechet_distance`: symmetric
eigendecompositions in float64) against the recipe of pytorch-fid / frechet_audio_distance (scipy.linalg.sqrtm of
the non-symmetric product, an eps fix-up when it is not finite, the real part), at d = 128 (VGGish) and 2048.
Throughput: a 3-minute 4-stem song at 22.05 kHz through `msdm_si_sdri`; seconds of audio embedded per second by
VGGish (random weights in the public layout) and by the `toy` InstrumentEmbedder.
Run: `.venv/bin/python bench/metrics.py`.
"""
import argparse
import math
import time

import numpy as np
import torch

from msg_edu.embedders import EmbedderConfig, InstrumentEmbedder, VGGish
from msg_edu.metrics import frechet_distance, msdm_si_sdri

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady numbers on a shared 2-core machine)")
p.add_argument("--decades", type=float, default=12.0, help="spread of the covariance eigenvalues")
args = p.parse_args()
torch.set_num_threads(args.threads)


def timed(fn, repeats=3):
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return out, best


def scipy_fd(mu1, s1, mu2, s2, eps=1e-6):
    "The usual recipe (pytorch-fid's calculate_frechet_distance), for comparison."
    from scipy import linalg
    diff = mu1 - mu2
    def sqrtm(a):
        out = linalg.sqrtm(a)
        return out[0] if isinstance(out, tuple) else out
    covmean = sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"\nFréchet distance, eigenvalues over {args.decades:g} decades (relative error against the closed form; time):")
rng = np.random.default_rng(0)
results = []
for d in (128, 2048):
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    a = 10.0 ** rng.uniform(-args.decades, 0, d)
    b = a * rng.uniform(0.5, 2.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    exact = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    ours, t_ours = timed(lambda: frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2)))
    row = f"  d = {d:>4}: msg_edu {abs(ours - exact) / exact:.1e} in {t_ours * 1e3:7.1f} ms"
    try:
        ref, t_ref = timed(lambda: scipy_fd(mu1, s1, mu2, s2), repeats=1 if d > 1000 else 3)
        row += f" | scipy sqrtm {abs(ref - exact) / exact:.1e} in {t_ref * 1e3:7.1f} ms"
        results.append(f"RESULT Fréchet distance, d = {d}: relative error {abs(ours - exact) / exact:.1e} vs scipy sqrtm's "
                       f"{abs(ref - exact) / exact:.1e}; {t_ref / t_ours:.1f}x its speed")
    except ImportError:
        row += " | scipy not installed: no reference"
    print(row)

print("\nMSDM's SI-SDRi protocol, a 3-minute 4-stem song at 22.05 kHz:")
sr, n = 22050, 180 * 22050
g = torch.Generator().manual_seed(0)
ref = torch.randn(4, n, generator=g) * 0.1
est = ref + 0.05 * torch.randn(4, n, generator=g)
res, t = timed(lambda: msdm_si_sdri(est, ref, sr=sr))
t_sdr = t
print(f"  {res.n_chunks} chunks in {t * 1e3:.0f} ms ({180 / t:,.0f} s of 4-stem audio per second)")

print("\nEmbedders (seconds of 16 kHz audio embedded per second, batches of 8 clips of 10 s):")
clips = torch.randn(8, 10 * 16000, generator=g) * 0.1
for name, model in (("VGGish (public layout, random weights)", VGGish()),
                    ("InstrumentEmbedder (toy)", InstrumentEmbedder(EmbedderConfig.preset("toy", classes=tuple("abcdefg"))))):
    emb, t = timed(lambda: model.embed(clips, 16000, batch_size=8), repeats=2)
    print(f"  {name:<40} {emb.shape[0]:>3} windows of {emb.shape[1]} in {t:6.2f} s: {80 / t:8.0f} s/s")
results.append(f"RESULT MSDM's SI-SDRi protocol: {180 / t_sdr:,.0f}x real time on a 4-stem song")
print("\n".join(results))
