"""Benchmark: peak memory of separating a 3-minute file against a 10-second one (issue 23: long inputs in bounded memory).

`msg-edu separate` cuts a file into the model's segments and separates them `batch` at a time (default 4). Each
measurement runs in a fresh process: it loads an untrained MSG-LD (the `tiny` networks with the `toy` preset's 2.56 s
segments, so a 3-minute song is 71 segments, as in the issue's report), reads a 44.1 kHz stereo WAV and separates it
with `separate_file` (2 DPM-Solver++ steps: the sampler's work does not change the memory). It reports the peak RSS of
the process, and that peak above the RSS after the model and the audio were loaded (what the separation itself
adds). The reference is the 10-second file, measured in the same run; the "before" rows put every segment in one
batch, as `by_segments` did before issue 23.
Run: `.venv/bin/python bench/long_input.py [--batch 4]`.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=4, help="segments per batch (the default of `msg-edu separate --batch`)")
p.add_argument("--child", nargs=3, metavar=("MODEL", "WAV", "BATCH"), help=argparse.SUPPRESS)
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    return float("nan")


if args.child:   # one measurement: load, separate, report
    import torch
    from msg_edu.audio import load_audio
    from msg_edu.msgld import MSGLD, separate_file
    torch.set_num_threads(args.threads)
    model, wav, batch = args.child[0], Path(args.child[1]), int(args.child[2])
    pipe = MSGLD.from_pretrained(model)
    load_audio(wav)                                   # the file's pages and the decoder's buffers, before the baseline
    base = rss_mb()
    r = separate_file(pipe, wav, Path(tempfile.mkdtemp()), steps=2, batch=batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"segments": r["segments"], "base_mb": base, "peak_mb": peak}))
    sys.exit(0)

import torch  # noqa: E402
from msg_edu.audio import save_audio  # noqa: E402
from msg_edu.samplers import DiffusionConfig  # noqa: E402
from msg_edu.msgld import MSGLD  # noqa: E402
from msg_edu.unet import MultiTrackUNet, UNetConfig  # noqa: E402
from msg_edu.vae import AutoencoderKL, VAEConfig  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="msg_edu_long_input_"))
torch.manual_seed(0)
MSGLD(AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny")), DiffusionConfig.preset("tiny"),
      segment_seconds=2.56).save_pretrained(work / "model")
g = torch.Generator().manual_seed(0)
for name, seconds in (("10s", 10), ("3min", 180)):
    save_audio(work / f"{name}.wav", 0.1 * torch.randn(2, seconds * 44100, generator=g), 44100)

rows = {}
for label, batch in ((f"batch {args.batch}", args.batch), ("one batch (before)", 10**6)):
    for name in ("10s", "3min"):
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", str(work / "model"),
                              str(work / f"{name}.wav"), str(batch)], capture_output=True, text=True, check=True).stdout
        rows[label, name] = json.loads(out.strip().splitlines()[-1])

print(f"# peak memory of separate_file, tiny networks, 2.56 s segments, 44.1 kHz stereo input, {args.threads} threads")
print("| batches | input | segments | RSS after loading (MB) | peak RSS (MB) | added by separating (MB) |")
print("|---|---|---|---|---|---|")
for (label, name), r in rows.items():
    print(f"| {label} | {name} | {r['segments']} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} |")
for label in (f"batch {args.batch}", "one batch (before)"):
    short, long = rows[label, "10s"], rows[label, "3min"]
    ratio = long["peak_mb"] / short["peak_mb"]
    added = (long["peak_mb"] - long["base_mb"]) / max(short["peak_mb"] - short["base_mb"], 1e-9)
    target = " (target <= 1.5x)" if label.startswith("batch") else ""
    print(f"RESULT separating 3 min vs 10 s, {label}: peak RSS {ratio:.2f}x{target}; memory added by the separation {added:.2f}x")
