"""Benchmark: how fast each vocoder of chapter 08 turns MSG-LD's output into sound, and what it costs.

One 10.24 s, 4-stem example (B = 1, S = 4: a (1, 4, 1025, 64) log-mel, MSG-LD's separation output), 2 CPU threads
(or the GPU, if there is one, for HiFi-GAN). Timed, median of several repeats: Griffin-Lim at 32 iterations (chapter 02,
the baseline), HiFi-GAN's generator in the `toy` and `slakh` (AudioLDM/MusicLDM 16 kHz/64-mel, 55M parameters)
sizes, untrained (speed does not depend on the weights), and mixture-consistent reconstruction with 0 and 32
refinements. Reported: seconds and the real-time factor (seconds of audio per second of compute), plus each route's
re-analysed log-mel L1 against the mels it was given (correctness of what was timed; HiFi-GAN's is meaningless
untrained and is not shown). Run: `.venv/bin/python bench/vocoder.py`.
"""
import argparse
import os
import platform
import statistics
import time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--seconds", type=float, default=10.24)
p.add_argument("--stems", type=int, default=4)
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)  # before torch starts its thread pools

import torch  # noqa: E402

from msg_edu.audio import example_music  # noqa: E402
from msg_edu.core import fmt_count, get_device, n_params  # noqa: E402
from msg_edu.mel import MelFrontend  # noqa: E402
from msg_edu.hifigan import HiFiGAN, HiFiGANConfig  # noqa: E402
from msg_edu.reconstruction import mixture_consistent  # noqa: E402
from msg_edu.vocoder import GriffinLimVocoder  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
front = MelFrontend()
stems = torch.cat([example_music(args.seconds, seed=i) * 0.25 for i in range(args.stems)])[None]  # (1, S, N)
mix, n = stems.sum(1), stems.shape[-1]
mels = front(stems)  # (1, S, T, 64)
audio_seconds = args.stems * args.seconds


def median_time(fn, sync=lambda: None):
    "Median over `repeats` calls after a warm-up; a call slower than 5 s is timed once (its warm-up is noise)."
    t0 = time.perf_counter(); fn(); sync(); first = time.perf_counter() - t0
    if first > 5: return first
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def l1(wave): return float((front(wave.cpu()) - mels).abs().mean())


rows = []
gl = GriffinLimVocoder(n_iter=32)
rows.append(("Griffin-Lim, 32 iterations (CPU)", median_time(lambda: gl(mels)), l1(gl(mels))))
device = get_device()
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
for preset in ("toy", "slakh"):
    g = HiFiGAN(HiFiGANConfig.preset(preset)).to(device).eval()
    m = mels.to(device)
    with torch.no_grad():
        t = median_time(lambda: g(m), sync)
    rows.append((f"HiFi-GAN {preset} ({fmt_count(n_params(g))} params, {device.type})", t, None))
    del g
for n_iter in (0, 32):
    rows.append((f"mixture-consistent, {n_iter} refinements (CPU)", median_time(lambda: mixture_consistent(mels, mix, n_iter)),
                 l1(mixture_consistent(mels, mix, n_iter))))

print(f"# vocoder benchmark: {args.stems} stems x {args.seconds} s at 16 kHz ({audio_seconds:.1f} s of audio), "
      f"{args.threads} CPU threads, median of {args.repeats} (calls over 5 s: once)")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}"
      + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
for name, t, err in rows:
    print(f"{name:<52} {t:8.2f} s   {audio_seconds / t:7.1f}x real time" + (f"   mel L1 {err:.3f}" if err is not None else ""))
for name, t, err in rows[1:]:
    print(f"RESULT vocoding {audio_seconds:.0f} s of stems, {name}: {rows[0][1] / t:.2f}x the speed of Griffin-Lim 32")
