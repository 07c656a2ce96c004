"""Benchmark: forward + backward of the multi-track U-Nets (chapter 07) at the `slakh` latent shape, one process each.

Latent (B, S, C, T, F) = (batch, 4, 8, 256, 16): four stems of 10.24 s through the mel VAE. Layouts: MSG-LD's 3-D
U-Net (`slakh` preset, the paper's), the track-axis U-Net (`slakh` preset widths, 2-D, per-track times, track
attention), and the reference: a plain 2-D U-Net with all tracks' channels stacked (`layout="stacked"`), its width
chosen so that its parameter count equals MSG-LD's. Each measurement is the median over `--repeats` passes of
forward + backward (mixture-conditioned, no optimiser), in a fresh process; peak memory is the process's peak RSS
above its start on the CPU, torch.cuda.max_memory_allocated on a GPU, where fp32 and bf16 autocast are timed and the
model FLOPs utilisation is reported (FLOPs counted by torch.utils.flop_counter; peak: the GPU's dense bf16/tf32
rate). Ratios are against the stacked reference measured in the same run. Run: `.venv/bin/python bench/unet.py`.
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
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--frames", type=int, default=256, help="latent frames T (256 = 10.24 s)")
p.add_argument("--worker", help=argparse.SUPPRESS)
args = p.parse_args()

# dense peak rates (FLOP/s) for MFU: bf16 and tf32 tensor cores, from the vendors' datasheets
PEAKS = {"H100": {"bf16": 989e12, "fp32": 495e12}, "H200": {"bf16": 989e12, "fp32": 495e12},
         "A100": {"bf16": 312e12, "fp32": 156e12}}


def build(layout: str, model_channels=None):
    from msg_edu.unet import MultiTrackUNet, UNetConfig
    cfg = UNetConfig.preset("slakh", layout=layout)
    if model_channels: cfg = cfg.replace(model_channels=model_channels)
    return MultiTrackUNet(cfg)


def worker(layout, model_channels, device, precision) -> dict:
    import torch
    from msg_edu.guidance import Cond
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(layout, model_channels).to(device)
    B, T = args.batch, args.frames
    x = torch.randn(B, 4, 8, T, 16, device=device)
    t = torch.full((B, 4), 0.5, device=device)
    cond = Cond(mix=torch.randn(B, 1, 8, T, 16, device=device))
    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = (lambda: torch.autocast("cuda", torch.bfloat16)) if precision == "bf16" else (lambda: torch.autocast("cpu", enabled=False))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        with ctx(): out = model(x, t, cond)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    flops = None
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc: step()
        flops = fc.get_total_flops()
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter(); step()
        if cuda: torch.cuda.synchronize()
        if i: times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    return {"s": statistics.median(times), "peak_mb": peak / 2**20, "params": sum(p.numel() for p in model.parameters()),
            "flops": flops, "gpu": torch.cuda.get_device_name() if cuda else None}


if args.worker:
    print(json.dumps(worker(*json.loads(args.worker))))
    sys.exit(0)

import torch  # noqa: E402


def measure(layout, model_channels, device, precision):
    res = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
                          "--batch", str(args.batch), "--frames", str(args.frames),
                          "--worker", json.dumps([layout, model_channels, device, precision])],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if res.returncode: raise SystemExit(f"{layout} on {device} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def n_params(layout, mc=None):
    with torch.device("meta"): return sum(p.numel() for p in build(layout, mc).parameters())  # no memory needed


# the stacked reference's width: the multiple of 32 (GroupNorm's groups) whose parameter count is closest to MSG-LD's
target = n_params("msgld")
stacked_mc = min(range(32, 513, 32), key=lambda mc: abs(n_params("stacked", mc) - target))
cases = [("stacked (reference)", "stacked", stacked_mc), ("msgld", "msgld", None), ("tracks", "tracks", None)]
print(f"# U-Net forward + backward at latent ({args.batch}, 4, 8, {args.frames}, 16): {platform.machine()}, "
      f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
print(f"# stacked reference: model_channels {stacked_mc} ({n_params('stacked', stacked_mc) / 1e6:.1f}M) "
      f"to match MSG-LD's {target / 1e6:.1f}M parameters")
runs = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
for device, precision in runs:
    rows = {name: measure(layout, mc, device, precision) for name, layout, mc in cases}
    ref = rows["stacked (reference)"]
    gpu = ref["gpu"]
    print(f"\n## {device} {precision}" + (f" ({gpu})" if gpu else ""))
    print(f"{'layout':>20} {'params':>8} {'s/pass':>8} {'samples/s':>10} {'peak MB':>9} {'time x ref':>11} {'memory x ref':>13}"
          + (f" {'TFLOP/pass':>11} {'MFU':>6}" if gpu else ""))
    peak = next((v[precision] for k, v in PEAKS.items() if gpu and k in gpu), None)
    for name, r in rows.items():
        line = (f"{name:>20} {r['params'] / 1e6:7.1f}M {r['s']:8.3f} {args.batch / r['s']:10.2f} {r['peak_mb']:9.0f} "
                f"{r['s'] / ref['s']:10.2f}x {r['peak_mb'] / ref['peak_mb']:12.2f}x")
        if gpu:
            line += f" {r['flops'] / 1e12:11.2f} " + (f"{r['flops'] / r['s'] / peak:6.1%}" if peak else "   n/a")
        print(line)
    for name, r in rows.items():
        if name != "stacked (reference)":
            print(f"RESULT U-Net forward + backward, {name} layout ({device} {precision}): {r['s'] / ref['s']:.2f}x the time and "
                  f"{r['peak_mb'] / ref['peak_mb']:.2f}x the memory of the stacked 2-D reference (sized to MSG-LD)")
