# msg_edu: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --no-input -q
# CPU machines get the CPU wheel; GPU users override, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install test demo lab bench readme docs outputs clean

install: $(VENV)/.installed

# torch goes in first, pinned, so that nothing later pulls an unpinned (CUDA) build.
$(VENV)/.installed: settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC) 2> >(grep -v "is ignored: it is neither" >&2)
	$(PIP) install -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

# Fails when the notebooks are not clean or the library is out of sync with them, then runs
# every notebook (tiny presets; `slow`/`gpu` cells skipped) and the pytest suite.
test: install
	@snapshot() { find nbs msg_edu -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha1sum; }; \
	before=$$(snapshot); \
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export || exit 1; \
	after=$$(snapshot); \
	if [ "$$before" != "$$after" ]; then \
	  echo "ERROR: nbdev_clean/nbdev_export changed these files; notebooks must be clean and msg_edu/ in sync. Review and commit them:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^[<>]' | awk '{print "  " $$3}' | sort -u; \
	  exit 1; \
	fi
	# one thread per notebook: nbdev_test runs one notebook per core, and torch's thread pools fighting over
	# the same cores made the suite ~10x slower (measured on 2 cores: 8 min -> 46 s)
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --timing
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/msg-edu demo --out $(DEMO_OUT)

lab: install
	$(VENV)/bin/jupyter lab nbs/

bench: install
	$(PY) bench/run.py   # every bench/*.py; writes bench/RESULTS.md

# The course site: every chapter executed in its tiny preset, static pages with a chapter sidebar that open from
# file:// (_docs/index.html), then checked in headless Chromium (Debian's package; installed here when missing).
docs: install
	$(PIP) install -e ".[docs]" 2> >(grep -v "is ignored: it is neither" >&2)
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
	$(PY) .ci/docs.py build --out _docs
	$(PY) .ci/docs.py check --out _docs --screenshots _docs/screenshots

# The outputs committed with the notebooks (what a reader sees on GitHub): every chapter executed in its tiny preset,
# plots kept as small PNGs, audio players, widgets and long logs left out; `make test` holds each notebook to 300 kB.
outputs: install
	$(PY) .ci/docs.py outputs
	$(VENV)/bin/nbdev_clean

# README.md is generated from nbs/index.ipynb (Quarto, nbdev's usual route, is not available here).
readme: install
	$(VENV)/bin/jupyter nbconvert --to markdown --stdout --log-level=ERROR nbs/index.ipynb > README.md

clean:
	rm -rf runs/ _proc/ _docs/ .pytest_cache/ build/ dist/ *.egg-info
