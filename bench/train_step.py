"""Benchmark: training-step speed and peak memory of the mel VAE (chapter 05), one process per measurement.

Measured: the `slakh` VAE (AudioLDM's, ch 128) on one 10.24 s mel (1024 x 64), batch 1 as AudioLDM trains it,
(a) before `disc_start` (autoencoder phase only) and (b) after it (adversarial term with the adaptive weight, and
the discriminator's own update); the `toy` VAE on its CPU batch (16 x 128 frames) for scale. Each is a full
Learner update (forward, backward, optimiser). The reference, measured in the same run, is the same model's
inference (encode + decode, no gradient): the ratio says what training costs on top. Peak memory: the process's
peak RSS above its start on the CPU; torch.cuda.max_memory_allocated on a GPU, where fp32 and bf16 autocast
are both timed. Run: `.venv/bin/python bench/train_step.py`.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=3, help="timed updates per measurement (after one warm-up)")
p.add_argument("--worker", help=argparse.SUPPRESS)
args = p.parse_args()

CASES = {  # name: (preset, batch, frames, disc active, inference only)
    "slakh, before disc_start": ("slakh", 1, 1024, False, False),
    "slakh, after disc_start": ("slakh", 1, 1024, True, False),
    "slakh, inference (reference)": ("slakh", 1, 1024, False, True),
    "toy, batch 16 x 128 frames": ("toy", 16, 128, False, False),
    "toy, inference (reference)": ("toy", 16, 128, False, True),
}


def worker(name: str, device: str, precision: str) -> dict:
    import torch
    from msg_edu.learner import Learner
    from msg_edu.vae import AutoencoderKL, VAEConfig
    from msg_edu.vae_training import VAETraining, vae_phases
    torch.set_num_threads(args.threads)
    preset, batch, frames, disc, infer = CASES[name]
    recipe = VAETraining.preset(preset)
    cfg = recipe.vae if not disc else recipe.vae.replace(disc_start=0)
    torch.manual_seed(0)
    vae = AutoencoderKL(cfg)
    mel = torch.randn(batch, frames, 64) - 5.0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = device == "cuda"
    if cuda: torch.cuda.reset_peak_memory_stats()
    times = []
    if infer:
        vae.to(device).eval(); m = mel.to(device)
        ctx = torch.autocast("cuda", torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        for i in range(args.steps + 1):
            t = time.perf_counter()
            with torch.no_grad(), ctx: vae(m, sample=False)
            if cuda: torch.cuda.synchronize()
            if i: times.append(time.perf_counter() - t)
    else:
        train = recipe.train.replace(steps=args.steps + 1, warmup=0, precision=precision)
        learn = Learner(vae, [mel] * (args.steps + 1), vae_phases(vae, recipe.ldm_optimizer), config=train, device=device,
                        progress=False)
        for i in range(args.steps + 1):
            t = time.perf_counter()
            learn.fit(until=i + 1)
            if cuda: torch.cuda.synchronize()
            if i: times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if cuda else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    n = sum(p.numel() for p in vae.parameters())
    return {"s": statistics.median(times), "peak_mb": peak / 2**20, "params": n}


if args.worker:
    name, device, precision = json.loads(args.worker)
    print(json.dumps(worker(name, device, precision)))
    sys.exit(0)

import torch  # noqa: E402

def measure(name, device="cpu", precision="fp32"):
    res = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--steps", str(args.steps),
                          "--worker", json.dumps([name, device, precision])],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if res.returncode: raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])

print(f"# VAE training step: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
      f"median of {args.steps} updates")
runs = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
for device, precision in runs:
    label = f"{device} {precision}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
    print(f"\n## {label}")
    print(f"{'case':>30} {'params':>8} {'s/step':>8} {'steps/s':>8} {'peak MB':>8} {'x inference':>12}")
    results = {name: measure(name, device, precision) for name in CASES}
    for name, r in results.items():
        ref = results[name.split(",")[0] + ", inference (reference)"]
        print(f"{name:>30} {r['params'] / 1e6:7.1f}M {r['s']:8.3f} {1 / r['s']:8.2f} {r['peak_mb']:8.0f} {r['s'] / ref['s']:11.1f}x")
    for name, r in results.items():
        if "inference" not in name:
            ref = results[name.split(",")[0] + ", inference (reference)"]
            print(f"RESULT VAE training step, {name} ({label}): {r['s']:.3f} s, {r['s'] / ref['s']:.1f}x the same model's "
                  f"inference, peak {r['peak_mb']:.0f} MB")
