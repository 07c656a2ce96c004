"""Benchmark: MSG-LD separation with DPM-Solver++(2M) at 25 steps against the paper's DDIM at 200 (eta = 1).

Both samplers separate the same test tracks with the same trained model (guidance w = 1); the table gives the
Log-Mel L1 per stem, the mean SI-SDRi (MSDM protocol, mixture-consistent reconstruction) and the wall time, with
the ratios DPM-Solver++ / DDIM. The mixture-as-estimate row is the baseline every stem must beat.
With `--model DIR` it uses a pipeline trained by `msg-edu train msgld`; otherwise it trains the `toy` preset on a
ToySlakh into `--work` (about 10 minutes on 2 CPU cores; reused on later runs).
On a CUDA machine it also prints the `slakh` preset's training throughput and peak memory (bf16 autocast).
Run: `.venv/bin/python bench/msgld.py [--model DIR] [--data DIR]`.
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", help="a trained MSG-LD pipeline folder (OUT/model of `msg-edu train msgld`)")
p.add_argument("--data", help="Slakh-layout data to separate (default: the toy ToySlakh, written if missing)")
p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "msg_edu_bench_msgld"), help="where the toy model is trained")
p.add_argument("--max-tracks", type=int, default=None, help="separate at most this many test tracks")
p.add_argument("--gpu-steps", type=int, default=30, help="slakh-preset training steps timed on CUDA")
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msg_edu.msgld import MSGLD, evaluate_msgld, train_msgld  # noqa: E402
from msg_edu.toyslakh import ToySlakhConfig, make_toy_slakh  # noqa: E402

torch.set_num_threads(args.threads)
work = Path(args.work)
data = Path(args.data) if args.data else make_toy_slakh(work / "toyslakh", **ToySlakhConfig.preset("toy").to_dict(), overwrite=True)
cache = work / "cache"
if args.model: pipe = MSGLD.from_pretrained(args.model, "cuda" if torch.cuda.is_available() else "cpu")
elif (work / "run" / "model" / "msgld.json").is_file(): pipe = MSGLD.from_pretrained(work / "run" / "model")
else:
    t0 = time.perf_counter()
    pipe = train_msgld(data, work / "run", "toy", cache_dir=cache, progress=False)[0]
    print(f"# trained the toy preset in {(time.perf_counter() - t0) / 60:.1f} min")

print(f"# MSG-LD sampler benchmark: separation of the test split of {data} at w = 1")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
      f"{args.threads} threads, device {pipe.device}")
rows = {}
for name, sampler, steps, eta in (("DDIM 200, eta 1 (paper)", "ddim", 200, 1.0), ("DPM-Solver++(2M) 25", "dpmpp_2m", 25, 0.0)):
    pipe.diffusion = pipe.diffusion.replace(eta=eta)
    t0 = time.perf_counter()
    rows[name] = evaluate_msgld(pipe, data, "test", guidance_w=1.0, sampler=sampler, steps=steps, cache_dir=cache,
                                max_tracks=args.max_tracks)
    rows[name]["seconds"] = time.perf_counter() - t0
stems = rows[name]["stems"]
mean = lambda d: float(np.mean([d[s] for s in stems]))
print("| estimate | " + " | ".join(f"L1 {s}" for s in stems) + " | L1 mean | SI-SDRi All (dB) | time (s) |")
print("|---" * (len(stems) + 4) + "|")
base = rows[name]
print("| mixture as estimate | " + " | ".join(f"{base['mix_log_mel_l1'][s]:.3f}" for s in stems)
      + f" | {mean(base['mix_log_mel_l1']):.3f} | 0.00 | - |")
for k, r in rows.items():
    print(f"| {k} | " + " | ".join(f"{r['log_mel_l1'][s]:.3f}" for s in stems)
          + f" | {mean(r['log_mel_l1']):.3f} | {r['si_sdri']['All']:.2f} | {r['seconds']:.1f} |")
ddim, dpm = rows["DDIM 200, eta 1 (paper)"], rows["DPM-Solver++(2M) 25"]
print(f"ratio DPM-Solver++ 25 / DDIM 200: Log-Mel L1 {mean(dpm['log_mel_l1']) / mean(ddim['log_mel_l1']):.3f}, "
      f"SI-SDRi difference {dpm['si_sdri']['All'] - ddim['si_sdri']['All']:+.2f} dB, time {dpm['seconds'] / ddim['seconds']:.3f} "
      f"({ddim['segments']} segments of {len(ddim['stems'])} stems)")
print(f"RESULT MSG-LD separation, DPM-Solver++(2M) 25 / the paper's DDIM 200: {dpm['seconds'] / ddim['seconds']:.2f}x the time, "
      f"Log-Mel L1 x{mean(dpm['log_mel_l1']) / mean(ddim['log_mel_l1']):.3f}, SI-SDRi {dpm['si_sdri']['All'] - ddim['si_sdri']['All']:+.2f} dB")

if torch.cuda.is_available():   # the slakh preset: throughput and peak memory of training steps in bf16 autocast
    from functools import partial
    from msg_edu.guidance import Cond
    from msg_edu.msgld import MSGLDTraining, msgld_loss
    from msg_edu.unet import MultiTrackUNet
    r = MSGLDTraining.preset("slakh")
    unet = MultiTrackUNet(r.unet).cuda()
    opt = torch.optim.AdamW(unet.parameters(), lr=r.train.lr)
    batch = {"stems": torch.randn(r.batch_size, 4, 8, 256, 16, device="cuda"),
             "mix": torch.randn(r.batch_size, 1, 8, 256, 16, device="cuda")}
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.gpu_steps + 3):
        if i == 3: torch.cuda.synchronize(); t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = msgld_loss(unet, batch, r.diffusion)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.gpu_steps
    print(f"slakh preset on {torch.cuda.get_device_name()}: {r.batch_size / dt:.2f} samples/s ({dt:.3f} s/step, batch "
          f"{r.batch_size}, 10.24 s segments), peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, bf16 autocast")
    print(f"RESULT MSG-LD slakh preset training on {torch.cuda.get_device_name()}: {r.batch_size / dt:.2f} samples/s, "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak (bf16 autocast)")
