"""Benchmark: where `make demo`'s time goes, stage by stage, against its 15-minute budget, and what a rerun costs.

Reads the stage times the demo recorded in `--demo DIR` (default `runs/demo`, what `make demo` writes): the first,
full run of each stage. If the folder holds no finished demo, it runs one first (about 11 minutes on 2 CPU cores);
then it runs the demo again, which reuses every stage, and times that rerun against the first run.
Run: `.venv/bin/python bench/demo.py [--demo DIR]`.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--demo", default="runs/demo", help="a demo folder (make demo's runs/demo)")
p.add_argument("--budget-min", type=float, default=15.0, help="the demo's budget in minutes (issue: <= 15 on 2 cores)")
args = p.parse_args()

import torch  # noqa: E402

from msg_edu.demo import run_demo  # noqa: E402

out = Path(args.demo)
done = out/"metrics.json"
if not done.is_file():
    print(f"# {out} holds no finished demo: running it first")
    run_demo(out, "toy")
first = json.loads(done.read_text())
t0 = time.perf_counter()
run_demo(out, first["preset"], first["seed"])
rerun = time.perf_counter() - t0
stages = {k: v["seconds"] for k, v in first["stages"].items()}
total = sum(stages.values())
print(f"\n# demo stages ({first['preset']} preset) from {done}: {platform.machine()}, {os.cpu_count()} CPUs, "
      f"torch {torch.__version__}, {first['threads']} threads")
print(f"{'stage':>12} {'seconds':>8} {'share':>7}")
for k, s in stages.items(): print(f"{k:>12} {s:8.1f} {s / total:7.1%}")
print(f"{'all':>12} {total:8.1f}")
top = max(stages, key=stages.get)
print(f"RESULT demo ({first['preset']}), every stage from nothing: {total:.0f} s = {total / (60 * args.budget_min):.2f}x the "
      f"{args.budget_min:g}-minute budget (setup not included); the largest stage, {top}, is {stages[top] / total:.0%}")
print(f"RESULT demo rerun (every stage reused): {rerun:.1f} s = {rerun / total:.3f}x the first run (target <= 120 s)")
