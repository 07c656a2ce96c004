"""Run every benchmark in bench/ and write bench/RESULTS.md: one line per ratio (the `RESULT` lines each script prints,
each measured in one run against its own reference), then every script's full output.

`make bench` runs this. Scripts run one after another in fresh processes, so their thread settings do not mix.
bench/msgld.py separates with the demo's trained MSG-LD when `make demo` has run (`runs/demo`), instead of training one.
Run: `.venv/bin/python bench/run.py [--only mel,data]`.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--only", help="comma-separated script names to run (default: all)")
p.add_argument("--out", default=str(HERE/"RESULTS.md"))
p.add_argument("--demo", default="runs/demo", help="the demo folder bench/demo.py and bench/msgld.py use")
args = p.parse_args()

demo = Path(args.demo)
extra = {"demo": ["--demo", str(demo)]}
if (demo/"models/msgld/model/msgld.json").is_file():
    extra["msgld"] = ["--model", str(demo/"models/msgld/model"), "--data", str(demo/"data")]
names = sorted(f.stem for f in HERE.glob("*.py") if f.stem != "run")
if args.only: names = [n for n in names if n in args.only.split(",")]

import torch  # noqa: E402  (for the header only)

sections, results, failed = [], [], []
for name in names:
    cmd = [sys.executable, str(HERE/f"{name}.py"), *extra.get(name, [])]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    text = res.stdout + (f"\n[stderr]\n{res.stderr[-3000:]}" if res.returncode else "")
    print(text, flush=True)
    if res.returncode: failed.append(name)
    lines = [l[len("RESULT "):] for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    results += [(name, l) for l in lines] or [(name, "FAILED (see below)" if res.returncode else "no RESULT line")]
    sections.append(f"## bench/{name}.py ({dt:.0f} s{', FAILED' if res.returncode else ''})\n\n```\n{text.strip()}\n```\n")

cpu = platform.processor() or platform.machine()
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
head = (f"# Benchmark results\n\nWritten by `make bench` (`bench/run.py`) on {datetime.date.today()}: {cpu}, "
        f"{os.cpu_count()} CPUs, GPU {gpu}, Python {platform.python_version()}, torch {torch.__version__}. Each script sets "
        f"its own thread count (2 unless its section says otherwise) and measures every ratio against its reference in "
        f"the same run.\n\n| benchmark | result |\n|---|---|\n")
table = "".join(f"| `{n}` | {l.replace('|', '/')} |\n" for n, l in results)
Path(args.out).write_text(head + table + "\n" + "\n".join(sections))
print(f"wrote {args.out}" + (f"; FAILED: {failed}" if failed else ""))
sys.exit(1 if failed else 0)
