"""Benchmark: sampler error against the number of model evaluations, on Gaussian data with the exact denoiser.

The data is the chapter's correlated Gaussian (3 tracks x 2 dims). Deterministic samplers (DDIM eta = 0,
DPM-Solver++(2M)) are affine maps of x_T for Gaussian data, so their output distribution is computed exactly
(no Monte Carlo noise) by running them on x_T = 0 and the unit vectors, starting from the true q(x_1); the error
is the Wasserstein-2 distance to the data distribution. DDPM is stochastic and is measured by Monte Carlo
(`--n-mc` samples; the table also prints the Monte-Carlo floor: the same estimate for exact data samples).
Prints one table per schedule and how many DDIM evaluations match DPM-Solver++ at 20 (log-log interpolation).
Run: `.venv/bin/python bench/samplers.py`.
"""
import argparse
import math
import os
import platform
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--n-mc", type=int, default=100_000, help="DDPM samples for the Monte-Carlo estimate")
p.add_argument("--schedules", default="cosine,linear", help="comma-separated: cosine (v-prediction), linear (eps)")
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msg_edu.diffusion import make_schedule  # noqa: E402
from msg_edu.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample  # noqa: E402
from msg_edu.toys import GaussianDenoiser, toy_gaussian  # noqa: E402

torch.set_num_threads(args.threads)
EVALS = [5, 10, 20, 50, 100, 200, 500]
DDPM_EVALS = [20, 50, 100, 200, 1000]
PRED = {"cosine": "v", "linear": "eps"}   # MGE-LDM's and MSG-LD's pairings


def mc_w2(den, x):
    xf = x.reshape(len(x), -1).double()
    return den.w2(xf.mean(0), torch.cov(xf.T))


def evals_to_match(target, evals, errs):
    "Evaluations at which a curve errs(evals) reaches `target` (log-log interpolation; inf if never)."
    le, lv = np.log(evals), np.log(errs)
    for i in range(len(evals) - 1):
        if errs[i] >= target >= errs[i + 1]:
            f = (math.log(target) - lv[i]) / (lv[i + 1] - lv[i])
            return float(np.exp(le[i] + f * (le[i + 1] - le[i])))
    return math.inf if errs[-1] > target else float(evals[0])


print(f"# sampler benchmark: W2 to the data Gaussian (6 dims) vs model evaluations; exact pushforward for DDIM and "
      f"DPM-Solver++, Monte Carlo ({args.n_mc} samples) for DDPM")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
      f"{args.threads} threads")
mean, cov = toy_gaussian()
for name in args.schedules.split(","):
    sch = make_schedule(name)
    den = GaussianDenoiser(mean, cov, sch, PRED[name])
    t0 = time.perf_counter()
    curves = {
        "DDIM, uniform t": [den.w2(*den.exact_output(ddim_sample, n)) for n in EVALS],
        "DDIM, log-SNR": [den.w2(*den.exact_output(ddim_sample, n, spacing="logsnr")) for n in EVALS],
        "DPM-Solver++(2M), uniform t": [den.w2(*den.exact_output(dpmpp_2m_sample, n)) for n in EVALS],
        "DPM-Solver++(2M), log-SNR": [den.w2(*den.exact_output(dpmpp_2m_sample, n, spacing="logsnr")) for n in EVALS],
    }
    g = torch.Generator().manual_seed(0)
    ddpm = {n: mc_w2(den, ddpm_sample(den, torch.randn(args.n_mc, 3, 2, generator=g), sch, n, generator=g)) for n in DDPM_EVALS}
    chol = torch.linalg.cholesky(cov)   # Monte-Carlo floor: the same estimate for exact data samples, mean of 5 draws
    floor = np.mean([mc_w2(den, mean.flatten() + torch.randn(args.n_mc, 6, generator=g) @ chol.T) for _ in range(5)])
    print(f"\n## {name} schedule, {PRED[name]}-prediction ({time.perf_counter() - t0:.1f} s)")
    print(f"{'evaluations':>28s} " + " ".join(f"{n:>8d}" for n in EVALS))
    for label, errs in curves.items():
        print(f"{label:>28s} " + " ".join(f"{e:8.4f}" for e in errs))
    print(f"{'DDPM (Monte Carlo)':>28s} " + " ".join(f"{ddpm[n]:8.4f}" if n in ddpm else f"{'':8s}" for n in EVALS)
          + f"   [1000: {ddpm[1000]:.4f}; Monte-Carlo floor {floor:.4f}: smaller values are noise]")
    ddim = curves["DDIM, uniform t"]
    for grid in ("uniform t", "log-SNR"):
        target = curves[f"DPM-Solver++(2M), {grid}"][EVALS.index(20)]
        need = evals_to_match(target, EVALS, ddim)
        print(f"DPM-Solver++(2M) @ 20 ({grid}): W2 {target:.4f} = DDIM (uniform t) @ {need:.0f} evaluations "
              f"-> {need / 20:.1f}x fewer evaluations")
        print(f"RESULT samplers, {name} schedule ({grid} grid): DPM-Solver++(2M) at 20 evaluations is as close as DDIM at "
              f"{need:.0f}: {need / 20:.1f}x fewer evaluations")
