"""The course site: every chapter executed in its `tiny` preset (as `make test` runs it: `slow`/`gpu` cells skipped),
rendered to static HTML pages with a chapter sidebar that open from file:// with no server and no network, then
checked in headless Chromium (no console errors, every image and audio player resolves).

    python .ci/docs.py build [--out _docs] [--jobs 2]
    python .ci/docs.py check [--out _docs] [--screenshots DIR]
    python .ci/docs.py outputs [--jobs 2] [--glob "0*.ipynb"]   # the same execution, its outputs kept in nbs/ (small PNGs, no audio, short logs)
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
SKIP_FLAGS = {"notest", "slow", "gpu"}          # settings.ini's tst_flags, as nbdev_test skips them

CSS = """
body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #222; display: flex; }
nav { position: sticky; top: 0; height: 100vh; overflow-y: auto; width: 250px; flex: none; background: #f5f5f7;
      border-right: 1px solid #ddd; padding: 12px; box-sizing: border-box; }
nav h2 { font-size: 16px; margin: 4px 0 10px; } nav ol { padding-left: 0; list-style: none; margin: 0; }
nav li { margin: 2px 0; } nav a { color: #234; text-decoration: none; display: block; padding: 2px 6px; border-radius: 4px; }
nav a:hover { background: #e4e6ea; } nav b { color: #678; font-weight: 600; margin-right: 4px; } nav a.here { background: #d6e4ff; font-weight: 600; }
main { flex: 1; min-width: 0; padding: 16px 32px; max-width: 1100px; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 13px; border-radius: 4px; }
.jp-InputArea, .input_area { margin-top: 12px; }
.jp-OutputArea-output pre, .output_text pre { background: #fff; border-left: 3px solid #ccd; }
.jp-RenderedImage img, img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
.jp-InputPrompt, .jp-OutputPrompt, .prompt { display: none; }
"""


def _skipped(cell) -> bool:
    "A code cell nbdev_test would skip: a `#| slow`/`#| gpu`/`#| notest` flag or `#| eval: false`."
    if cell.cell_type != "code": return True
    flags = set()
    for line in cell.source.splitlines():
        if not line.startswith("#|"): break
        d = line[2:].strip()
        if d.replace(" ", "") == "eval:false": return True
        flags.update(d.split())
    return bool(flags & SKIP_FLAGS)


def execute(src: Path, dest: Path) -> None:
    "Run one notebook top to bottom in the tiny preset, outputs kept (one process per notebook, as nbdev_test does)."
    os.environ.update(IN_TEST="1", MSG_EDU_PRESET="tiny")
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb = read_nb(src)
    cwd = os.getcwd()
    os.chdir(src.parent)
    try: CaptureShell(src, mpl_format="png").run_all(nb, exc_stop=True, preproc=_skipped)
    finally: os.chdir(cwd)
    write_nb(nb, dest)


MAX_LINES, MAX_WIDTH, MAX_HTML, BUDGET_KB = 30, 900, 20_000, 200   # what a committed notebook keeps of a cell's output


def _small_png(b64: str, width: int = MAX_WIDTH, colours: int = 128) -> str:
    "A plot as a small PNG: at most `width` pixels wide, `colours` colours (plots have few); the original if that is no smaller."
    import base64, io
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    if im.width > width: im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    buf = io.BytesIO(); im.quantize(colours).save(buf, "PNG", optimize=True)
    small = base64.b64encode(buf.getvalue()).decode()
    return small if len(small) < len(b64) else b64


def _short(text: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= MAX_LINES: return text
    return "".join(lines[:20] + [f"... ({len(lines) - 28} lines left out; run the notebook for all of them)\n"] + lines[-8:])


def slim_outputs(outputs: list, width: int = MAX_WIDTH, colours: int = 128) -> list:
    "What a committed notebook keeps: plots as small PNGs, text and small tables, long logs shortened; no audio, no widgets."
    kept = []
    for o in outputs:
        if o.get("output_type") == "stream":
            kept.append({**o, "text": _short("".join(o["text"]))}); continue
        if o.get("output_type") not in ("display_data", "execute_result"): continue
        data = dict(o.get("data", {}))
        html_ = "".join(data.get("text/html", ""))
        if "<audio" in html_ or "application/vnd.jupyter.widget-view+json" in data:
            note = "[an audio player]" if "<audio" in html_ else "[an interactive widget]"
            kept.append({"output_type": "display_data", "metadata": {},
                         "data": {"text/plain": f"{note}: run the notebook, or open the course site (make docs)"}}); continue
        if "image/png" in data:
            data = {"image/png": _small_png("".join(data["image/png"]).replace("\n", ""), width, colours),
                    "text/plain": data.get("text/plain", "")}
        elif html_ and len(html_) > MAX_HTML: data.pop("text/html")
        if "text/plain" in data: data["text/plain"] = _short("".join(data["text/plain"]))
        kept.append({**o, "data": data, "metadata": {}})
    return kept


def outputs(jobs: int, glob: str = "*.ipynb") -> None:
    "Execute every chapter as `build` does and keep its slimmed outputs in nbs/ (then nbdev_clean normalises them)."
    notebooks = sorted({nb for g in glob.split(",") for nb in NBS.glob(g.strip())})
    tmp = ROOT / "_docs" / "outputs"; shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    def run(nb: Path):
        return nb, subprocess.run([sys.executable, __file__, "_execute", str(nb), str(tmp / nb.name)], capture_output=True,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    failed = []
    with cf.ThreadPoolExecutor(jobs) as pool:
        for nb, r in pool.map(run, notebooks):
            if r.returncode: failed.append(nb.name); print(f"FAILED {nb.name}:\n{r.stderr[-3000:]}", file=sys.stderr); continue
            src, done = json.loads(nb.read_text()), json.loads((tmp / nb.name).read_text())
            if [c.get("id") for c in src["cells"]] != [c.get("id") for c in done["cells"]]:
                failed.append(nb.name); print(f"{nb.name} changed while it ran; run outputs again", file=sys.stderr); continue
            for width, colours in ((MAX_WIDTH, 128), (640, 32), (512, 16)):      # smaller plots for a chapter with many of them
                for c, d in zip(src["cells"], done["cells"]):
                    if c["cell_type"] == "code": c["outputs"] = [] if _skipped_dict(c) else slim_outputs(d.get("outputs", []), width, colours)
                kb = sum(len(json.dumps(c.get("outputs", []))) for c in src["cells"]) / 1000
                if kb <= BUDGET_KB: break
            nb.write_text(json.dumps(src, indent=1, ensure_ascii=False) + "\n")
            print(f"{nb.name}: {kb:.0f} kB of outputs", flush=True)
    shutil.rmtree(tmp)
    if failed: raise SystemExit(f"{len(failed)} notebook(s) failed to execute: {failed}")


def _skipped_dict(cell: dict) -> bool:
    from types import SimpleNamespace
    return _skipped(SimpleNamespace(cell_type=cell["cell_type"], source="".join(cell["source"])))


def _title(nb: dict, name: str) -> str:
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", "".join(c["source"]), re.M)
            if m: return m.group(1).strip()
    return name


def render(executed: Path, chapters: list[tuple[str, str]], here: str) -> str:
    "One page: the sidebar and the executed chapter (nbconvert's `basic` template: no scripts, no CDN)."
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter(template_name="basic").from_filename(str(executed))
    label = lambda n, t: html.escape(t) if n == "index" else f"<b>{html.escape(n.split('_')[0])}</b> {html.escape(t)}"
    items = "".join(f'<li><a href="{n}.html"{" class=here" if n == here else ""}>{label(n, t)}</a></li>'
                    for n, t in chapters)
    title = dict(chapters)[here]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)} · msg_edu</title>"
            f"<style>{CSS}</style></head><body><nav><h2>msg_edu</h2><ol>{items}</ol></nav><main>{body}</main></body></html>")


def build(out: Path, jobs: int) -> list[Path]:
    notebooks = sorted(NBS.glob("*.ipynb"), key=lambda p: (p.name != "index.ipynb", p.name))
    if not notebooks: raise SystemExit(f"no notebooks in {NBS}")
    shutil.rmtree(out, ignore_errors=True); (out / "executed").mkdir(parents=True)
    t0, failed = time.perf_counter(), []
    def run(nb: Path):
        r = subprocess.run([sys.executable, __file__, "_execute", str(nb), str(out / "executed" / nb.name)],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return nb, r
    with cf.ThreadPoolExecutor(jobs) as pool:
        for nb, r in pool.map(run, notebooks):
            if r.returncode: failed.append(nb.name); print(f"FAILED {nb.name}:\n{r.stderr[-3000:]}", file=sys.stderr)
            else: print(f"executed {nb.name}", flush=True)
    if failed: raise SystemExit(f"{len(failed)} notebook(s) failed to execute: {failed}")
    chapters = [(nb.stem, _title(json.loads(nb.read_text()), nb.stem)) for nb in notebooks]
    pages = []
    for nb in notebooks:
        page = out / f"{nb.stem}.html"
        page.write_text(render(out / "executed" / nb.name, chapters, nb.stem), encoding="utf-8")
        pages.append(page)
    shutil.rmtree(out / "executed")
    mb = sum(p.stat().st_size for p in pages) / 1e6
    print(f"{len(pages)} pages, {mb:.1f} MB, in {time.perf_counter() - t0:.0f} s: open {out / 'index.html'}")
    return pages


CHECK_JS = """async () => {
  const imgs = [...document.images];
  const badImgs = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 60));
  const audios = [...document.querySelectorAll('audio')];
  const ready = await Promise.all(audios.map(a => new Promise(done => {
    if (a.readyState >= 1) return done(true);
    a.addEventListener('loadedmetadata', () => done(true)); a.addEventListener('error', () => done(false), true);
    a.load(); setTimeout(() => done(a.readyState >= 1), 10000);
  })));
  return {images: imgs.length, badImages: badImgs, audios: audios.length, badAudios: ready.filter(r => !r).length,
          sidebar: document.querySelectorAll('nav a').length};
}"""


def check(out: Path, screenshots: Path | None) -> None:
    "Open every page from file:// in headless Chromium; fail on a console error, a page error or an unresolved image/audio."
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None: raise SystemExit("no Chromium found: install Debian's package (`apt-get install chromium`), then rerun.")
    pages = sorted(out.glob("*.html"))
    if not pages: raise SystemExit(f"no pages in {out}: run `python .ci/docs.py build` first.")
    problems, totals = [], dict(images=0, audios=0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
        for path in pages:
            errors.clear()
            page.goto(path.resolve().as_uri(), wait_until="load")
            r = page.evaluate(CHECK_JS)
            totals["images"] += r["images"]; totals["audios"] += r["audios"]
            bad = errors + [f"image not loaded: {s}" for s in r["badImages"]] + ([f"{r['badAudios']} audio element(s) not loadable"] if r["badAudios"] else [])
            if r["sidebar"] != len(pages): bad.append(f"sidebar has {r['sidebar']} links, expected {len(pages)}")
            print(f"{'ok ' if not bad else 'BAD'} {path.name}: {r['images']} images, {r['audios']} audio players", flush=True)
            problems += [f"{path.name}: {b}" for b in bad]
            if screenshots and path.stem in ("index", "10_msgld"):
                screenshots.mkdir(parents=True, exist_ok=True)
                if path.stem == "10_msgld": page.evaluate("document.querySelector('main img')?.scrollIntoView()")
                page.screenshot(path=str(screenshots / f"{path.stem}.png"))
        browser.close()
    print(f"{len(pages)} pages, {totals['images']} images, {totals['audios']} audio players checked in {chromium}")
    if problems: raise SystemExit("site check failed:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_execute": execute(Path(sys.argv[2]), Path(sys.argv[3])); sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("build", "check", "outputs"))
    ap.add_argument("--out", type=Path, default=ROOT / "_docs")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--screenshots", type=Path)
    ap.add_argument("--glob", default="*.ipynb", help="outputs: which notebooks (comma-separated globs)")
    a = ap.parse_args()
    if a.command == "outputs": outputs(a.jobs, a.glob)
    else: build(a.out, a.jobs) if a.command == "build" else check(a.out, a.screenshots)
