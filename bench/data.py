"""Benchmark: loading a training segment from the resampling cache vs decoding + resampling the FLAC files.

A small ToySlakh in Slakh2100's format (44.1 kHz FLAC) is written to a temporary folder; each measurement loads the
four MSDM classes of one 10.24 s segment at 16 kHz, (a) by seeking in the FLACs, decoding and resampling
(`load_audio(..., sr=16000, offset, duration)`), (b) from `AudioCache` (memory-mapped .npy written on first use).
Median over repeats, same process. Run: `.venv/bin/python bench/data.py`.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=5)
args = p.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msg_edu.audio import load_audio  # noqa: E402
from msg_edu.data import MSDM_STEMS, SlakhIndex  # noqa: E402
from msg_edu.toyslakh import make_toy_slakh  # noqa: E402

torch.set_num_threads(args.threads)
tmp = Path(tempfile.mkdtemp())
root = make_toy_slakh(tmp / "toyslakh", n_tracks=6, sr=44100, seconds=20.0, n_omitted=0)
index = SlakhIndex(root, "train", stems=MSDM_STEMS, missing="zero", cache_dir=tmp / "cache")
seg, sr = 10.24, index.cache.sr
rng = np.random.default_rng(0)
jobs = [(t, float(rng.uniform(0, t.seconds - seg))) for t in index.tracks for _ in range(3)]

def from_flac():
    for t, start in jobs:
        for c in index.classes:
            sum(load_audio(f, sr=sr, offset=start, duration=seg, mono=True)[0] for f in t.files(c))

def from_cache():
    for t, start in jobs:
        for c in index.classes: index.load(t, c, int(start * sr), int(seg * sr))

def median_time(fn):
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(jobs)

t_first = time.perf_counter(); from_cache(); t_first = (time.perf_counter() - t_first) / len(jobs)  # fills the cache
t_flac, t_cache = median_time(from_flac), median_time(from_cache)
print(f"# data benchmark: one 10.24 s segment of {len(index.classes)} classes at {sr} Hz from 44.1 kHz FLAC; "
      f"{args.threads} threads, median of {args.repeats} x {len(jobs)} segments")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}")
print(f"decode + resample the FLACs (seek)  {1e3 * t_flac:8.2f} ms   1.00x")
print(f"first pass (fills the cache)        {1e3 * t_first:8.2f} ms")
print(f"from the cache (memory-mapped)      {1e3 * t_cache:8.2f} ms   {t_flac / t_cache:.1f}x")
print(f"RESULT a 10.24 s training segment: from the cache {t_flac / t_cache:.1f}x faster than decoding + resampling the "
      f"FLACs (target >= 10x)")
