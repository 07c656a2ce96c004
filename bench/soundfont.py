"""Benchmark: the SoundFont player (chapter 03b) and ToySlakh written through it (chapter 03a).

(1) Rendering speed per stem on ONE core, as a multiple of real time: every stem of the first tracks of ToySlakh's `toy`
preset (12 s at 44.1 kHz, programs drawn as ToySlakh draws them, pretty_midi's TimGM6mb.sf2), and two dense parts a
MIDI file may hold (random notes, 8 per second, on a piano and on a layered string pad). Target: >= 50x per stem.
(2) ToySlakh's `toy` preset (48 tracks x 12 s + 2 omitted, FLAC) written with 2 workers, through the SoundFont and, as
the reference measured in the same run, with the oscillators. Target: under a minute.
Run: `.venv/bin/python bench/soundfont.py [--tracks 12]`.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--tracks", type=int, default=12, help="ToySlakh tracks whose stems are timed in (1)")
p.add_argument("--jobs", type=int, default=2, help="workers for (2)")
args = p.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from msg_edu.soundfont import load_soundfont  # noqa: E402
from msg_edu.soundfont_player import find_preset, render_notes  # noqa: E402
from msg_edu.slakh_format import Note  # noqa: E402
from msg_edu.toyslakh import INSTRUMENTS, ToySlakhConfig, draw_programs, make_toy_slakh, plan_track  # noqa: E402

torch.set_num_threads(1)
sr, seconds = 44100, 12.0
sf = load_soundfont()
load = os.getloadavg()[0]
print(f"# SoundFont benchmark: {sf}; one core for (1), {args.jobs} workers for (2)")
print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the start; "
      f"torch {torch.__version__}")

def speed(preset, notes, n) -> float:
    t0 = time.perf_counter(); render_notes(sf, preset, notes, sr, n); return (n / sr) / (time.perf_counter() - t0)

per_stem = {}
for index in range(args.tracks):
    plan, programs = plan_track(0, index, seconds), draw_programs(0, index)
    for inst, notes in plan.stems.items():
        if not plan.rendered[inst]: continue
        preset, _ = find_preset(sf, programs[inst], INSTRUMENTS[inst].is_drum)
        per_stem.setdefault(inst, []).append(speed(preset, notes, int(seconds * sr)))
every = [x for v in per_stem.values() for x in v]
print(f"\n(1) rendering, x real time per stem on one core ({len(every)} ToySlakh stems of {seconds:g} s at {sr} Hz)")
for inst, v in per_stem.items():
    print(f"  {inst:9} {len(v):3} stems   median {statistics.median(v):7.0f}x   slowest {min(v):7.0f}x")
rng = np.random.default_rng(0)
dense = {}
for name, program in (("piano, 8 random notes/s", 0), ("string pad (5 layers), 8 random notes/s", 48)):
    notes = [Note(float(t), float(rng.uniform(0.1, 1.0)), int(rng.integers(40, 90)), int(rng.integers(40, 128)))
             for t in np.sort(rng.uniform(0, 30, 240))]
    dense[name] = speed(find_preset(sf, program)[0], notes, 31 * sr)
    print(f"  {name:40} {dense[name]:7.0f}x")
print(f"RESULT SoundFont rendering at 44.1 kHz on one core: median {statistics.median(every):.0f}x real time per ToySlakh stem, "
      f"slowest {min(every):.0f}x ({len(every)} stems; target >= 50x)")
print(f"RESULT SoundFont rendering of dense parts (8 random notes/s) on one core: piano {dense['piano, 8 random notes/s']:.0f}x, "
      f"5-layer string pad {dense['string pad (5 layers), 8 random notes/s']:.0f}x real time")

cfg = ToySlakhConfig.preset("toy")
times = {}
for synth in ("sf2", "osc"):
    root = Path(tempfile.mkdtemp()) / "toy"
    t0 = time.perf_counter()
    make_toy_slakh(root, **cfg.replace(synth=synth).to_dict(), n_jobs=args.jobs)
    times[synth] = time.perf_counter() - t0
print(f"\n(2) ToySlakh `toy` ({cfg.n_tracks} tracks x {cfg.seconds:g} s + {cfg.n_omitted} omitted, {cfg.sr} Hz FLAC), "
      f"{args.jobs} workers: SoundFont {times['sf2']:.1f} s, oscillators {times['osc']:.1f} s; "
      f"load average {os.getloadavg()[0]:.1f} at the end")
print(f"RESULT ToySlakh toy set through the SoundFont written in {times['sf2']:.1f} s with {args.jobs} workers "
      f"({times['sf2'] / times['osc']:.2f}x the oscillators' {times['osc']:.1f} s; target < 60 s)")
