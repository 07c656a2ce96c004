"""The project's promises about itself: README commands, CI, install metadata, the CLI."""
import configparser
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"^make (\w+)", (ROOT / "README.md").read_text(), flags=re.M)


def test_readme_commands_are_makefile_targets():
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    commands = readme_commands()
    assert commands[:2] == ["demo", "test"], commands
    assert set(commands) <= targets


def test_ci_runs_the_readme_test_command():
    lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert "make test" in lines


def test_readme_is_generated_from_index_notebook():
    nb = nbformat.read(ROOT / "nbs/index.ipynb", as_version=4)
    body, _ = MarkdownExporter().from_notebook_node(nb)
    assert (ROOT / "README.md").read_text() == body, "README.md is out of date: run `make readme`"


def test_settings_hold_requirements_and_flags():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert d["tst_flags"].split() == ["notest", "slow", "gpu"]
    for req in ["torch>=2.4", "einops", "numpy", "soundfile", "pyyaml", "matplotlib", "ipywidgets", "tqdm", "safetensors"]:
        assert req in d["requirements"].split()
    for req in ["nbdev==2.4.14", "execnb<0.2", "fastcore<2", "ghapi<2", "pytest", "librosa", "jupyterlab", "hypothesis"]:
        assert req in d["dev_requirements"].split()
    setup = (ROOT / "setup.py").read_text()
    assert "import pkg_resources" not in setup and "from pkg_resources" not in setup


def test_makefile_installs_pinned_torch_first():
    make = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in make
    assert make.index("install $(TORCH_SPEC)") < make.index('install -e ".[dev]"')


def test_library_imports_without_dev_tools():
    code = ("import sys; import msg_edu.core, msg_edu.audio, msg_edu.mel, msg_edu.toyslakh, msg_edu.data, msg_edu.cli; "
            "bad = [m for m in ('librosa', 'nbdev', 'IPython', 'matplotlib') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy or dev-only modules imported at import time: {out}"


def _demo_cmd(out) -> list[str]:
    return [str(Path(sys.executable).parent / "msg-edu"), "demo", "--preset", "tiny", "--out", str(out)]


def test_demo_killed_during_training_resumes(tmp_path):
    """`msg-edu demo` killed (SIGKILL) while MSG-LD trains: the rerun keeps every finished stage and continues MSG-LD
    from its newest checkpoint; a third run reuses everything."""
    from msg_edu.learner import has_checkpoint
    out = tmp_path / "demo"
    run, done = out / "models/msgld/unet_run", out / "stages/msgld.json"
    log = open(tmp_path / "first_run.log", "w")   # a file, not a pipe: a full pipe would stall the demo
    proc = subprocess.Popen(_demo_cmd(out), stdout=log, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    while not (has_checkpoint(run) or done.exists()):
        assert proc.poll() is None, "the demo ended before MSG-LD saved a checkpoint:\n" + (tmp_path / "first_run.log").read_text()
        assert time.perf_counter() - t0 < 300, "no MSG-LD checkpoint after 300 s"
        time.sleep(0.01)
    proc.kill(); proc.wait(); log.close()
    assert not done.exists(), "MSG-LD finished before the kill: the test needs a longer tiny run (demo_plan('tiny'))"
    finished = {f: f.stat().st_mtime_ns for f in (out / "stages").glob("*.json")}
    assert {f.stem for f in finished} == {"front_end", "data", "vae", "vocoder"}
    vae_weights = (out / "models/vae/model.safetensors").stat().st_mtime_ns

    res = subprocess.run(_demo_cmd(out), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(f.stat().st_mtime_ns == t for f, t in finished.items()), "a finished stage was run again"
    assert (out / "models/vae/model.safetensors").stat().st_mtime_ns == vae_weights
    msgld = json.loads(done.read_text())["result"]
    assert msgld["resumed_from"] >= 10 and msgld["steps"] == 40, msgld
    assert "resuming" in res.stdout and (out / "report.html").is_file()

    t = time.perf_counter()
    res = subprocess.run(_demo_cmd(out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.count("done before, reused") == 9, res.stdout
    assert time.perf_counter() - t < 60


OUTPUT_BUDGET = 300_000   # bytes of outputs a committed notebook may carry (plots as small PNGs, no audio, no long logs)


def test_committed_notebook_outputs_stay_within_budget():
    heavy = {}
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        size = sum(len(json.dumps(c.get("outputs", []))) for c in cells)
        if size > OUTPUT_BUDGET: heavy[path.name] = size
    assert not heavy, (f"notebook outputs over {OUTPUT_BUDGET // 1000} kB: {heavy}; strip audio players and long logs "
                       f"(`nbdev_clean`), keep plots as small PNGs")


def test_docs_site_runs_what_make_test_runs():
    "The site builder executes a chapter as nbdev_test does: `slow`, `gpu`, `notest` and `eval: false` cells skipped."
    import importlib.util
    from types import SimpleNamespace as Cell
    spec = importlib.util.spec_from_file_location("docs", ROOT / ".ci/docs.py")
    docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(docs)
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert docs.SKIP_FLAGS == set(cfg["DEFAULT"]["tst_flags"].split())
    skipped = lambda src, kind="code": docs._skipped(Cell(cell_type=kind, source=src))
    assert skipped("#| slow\ntrain()") and skipped("#| gpu\nx.cuda()") and skipped("#| eval: false\n1")
    assert not skipped("#| export\ndef f(): pass") and not skipped("x = 1  #| slow is only a flag on the first lines")
    assert skipped("# Title", kind="markdown")
    assert "make docs" in (ROOT / "README.md").read_text() and "docs:" in (ROOT / "Makefile").read_text()


def test_cli_imports_a_subcommand_s_modules_when_it_runs():
    "`msg-edu --help` and `msg-edu info` load no pipeline: each subcommand imports its own modules when it runs."
    code = ("import sys, msg_edu.cli; print(sorted(m for m in ('msg_edu.msgld', 'msg_edu.mgeldm', 'msg_edu.msdm', 'msg_edu.demo', "
            "'msg_edu.latent', 'msg_edu.unet', 'msg_edu.render_midi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"msg_edu.cli loads pipeline modules at import time: {out}"


def test_exported_cells_are_small_and_follow_prose():
    "Big classes grow cell by cell (`patch_to`): no exported cell over 60 lines without prose before it, none over 100."
    bad = []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for i, c in enumerate(cells):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or not src.startswith("#| export"): continue
            n = len(src.splitlines())
            if n > 100 or (n > 60 and cells[i - 1]["cell_type"] != "markdown"): bad.append(f"{nb.name} cell {i}: {n} lines")
    assert not bad, f"split these exported cells (a prose cell before each piece): {bad}"


def test_modules_stay_small():
    "One idea per module: none over 400 lines, the median at most 250 (the generated _modidx aside)."
    import statistics
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "msg_edu").glob("*.py") if p.name not in ("_modidx.py", "__init__.py")}
    big = {k: v for k, v in sizes.items() if v > 400}
    assert not big, f"modules over 400 lines: {big}; split them along their ideas (one chapter each)"
    assert statistics.median(sizes.values()) <= 250, f"median module size {statistics.median(sizes.values())} > 250"


def test_data_folder_holds_what_the_code_reads():
    "data/: ToySlakh's recipe, an example Slakh metadata.yaml and the papers' recipe files, each equal to what the code uses."
    from msg_edu.core import asset
    from msg_edu.mgeldm import MGELDMTraining
    from msg_edu.msdm import MSDMTraining
    from msg_edu.msgld import MSGLDTraining
    from msg_edu.toyslakh import INSTRUMENTS, ToySlakhConfig
    for name, cls in (("msgld", MSGLDTraining), ("mgeldm", MGELDMTraining), ("msdm", MSDMTraining)):
        assert cls.load(asset(f"recipes/{name}_slakh.yaml")) == cls.preset("slakh"), f"data/recipes/{name}_slakh.yaml is stale"
    assert len(INSTRUMENTS) == 10 and ToySlakhConfig.preset("tiny").n_tracks == 6          # read from data/toyslakh.yaml
    assert asset("slakh_metadata.yaml").is_file()
    assert {"recipes", "slakh_metadata.yaml", "toyslakh.yaml"} <= {p.name for p in (ROOT / "data").iterdir()}


def test_train_takes_a_recipe_file(toy, tmp_path, capsys):
    from msg_edu.cli import main
    assert main(["train", "msgld", "--recipe", str(ROOT / "data" / "recipes" / "msgld_slakh.yaml"), "--set", "batch_size=2", "--set", "segment_seconds=2.56", "--set", "hop_seconds=1.28",
                 "--data", str(toy), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "at batch 2" in capsys.readouterr().out


def test_no_module_imports_a_later_chapter_at_load_time():
    "A chapter builds on earlier ones: a module's top-level imports name modules of earlier (or the same) chapters only."
    import ast
    chapter = {}
    for p in (ROOT / "msg_edu").glob("*.py"):
        m = re.search(r"File to edit: \.\./nbs/(\S+)\.ipynb", p.read_text())
        if m: chapter[p.stem] = m.group(1)
    late = []
    for mod, nb in chapter.items():
        for node in ast.parse((ROOT / "msg_edu" / f"{mod}.py").read_text()).body:     # top level: what loading runs
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in chapter:
                if chapter[node.module] > nb: late.append(f"{mod} ({nb}) -> {node.module} ({chapter[node.module]})")
    assert not late, f"modules importing a later chapter at load time: {late}; import inside the function that needs it"
