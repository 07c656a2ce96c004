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


def test_cli_demo_writes_report(tmp_path):
    exe = Path(sys.executable).parent / "msg-edu"
    out = tmp_path / "demo"
    res = subprocess.run([str(exe), "demo", "--out", str(out), "--seconds", "2", "--n-iter", "8", "--preset", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resample_snr_db"] >= 60 > metrics["resample_snr_db_baseline_no_filter"]
    assert metrics["griffinlim_log_mel_l1"] < metrics["random_phase_log_mel_l1"]
    assert metrics["train_index"]["kept"] >= 1 and metrics["train_segments"] >= 1
    for name in ["example_44k.wav", "example_16k.wav", "mels.png", "report.md", "reconstruction_griffinlim.wav",
                 "stems.png", "stem_drums.wav", "stem_mix.wav"]:
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "toyslakh_tiny" / "toyslakh.json").exists() and (tmp_path / "cache").is_dir()
    t0 = time.perf_counter()  # a second run reuses the dataset and the cache
    res = subprocess.run([str(exe), "demo", "--out", str(out), "--seconds", "2", "--n-iter", "8", "--preset", "tiny"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and json.loads((out / "metrics.json").read_text())["toyslakh_write_s"] < 1.0


def test_cli_writes_toyslakh(tmp_path):
    exe = Path(sys.executable).parent / "msg-edu"
    res = subprocess.run([str(exe), "toy-slakh", "--out", str(tmp_path / "t"), "--preset", "tiny", "--fmt", "wav"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "'train': 4" in res.stdout and list((tmp_path / "t" / "train").glob("Track*/stems/S00.wav"))


def test_cli_reports_user_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).parent / "msg-edu"
    res = subprocess.run([str(exe), "demo", "--out", str(tmp_path), "--seconds", "0"], capture_output=True, text=True)
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr
