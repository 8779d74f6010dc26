# The two commands of the README. Each creates or reuses .venv/ and installs what it needs.
#   make quickstart   prepare the bundled corpus, train the quick-start model on CPU, print a sample
#   make test         the whole test suite (installs the dev extras and both plugin distributions)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
CLI := $(VENV)/bin/lightning-llm
PROMPT ?= ROMEO:

.PHONY: quickstart test lint install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: $(PY) pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core plugins/lightning-llm-alibi/pyproject.toml plugins/lightning-llm-xformers/pyproject.toml plugins/lightning-llm-blocklist/pyproject.toml
	# xformers itself without the plugin's torch pin: its wheel is built for torch 2.10.0, so here it can
	# never run, but the plugin's tests read its real build record and check the message that says so
	$(PIP) -e '.[dev,hf,eval,filters]' -e plugins/lightning-llm-alibi -e plugins/lightning-llm-blocklist -e 'plugins/lightning-llm-xformers[test]' xformers==0.0.35
	touch $@

install: $(VENV)/.core
install-dev: $(VENV)/.dev

quickstart: $(VENV)/.core
	$(CLI) prepare --config configs/data/classics.yaml
	@# a second `make quickstart` resumes the finished run instead of refusing to write over it
	$(CLI) fit --config configs/quickstart.yaml $$([ -f runs/quickstart/checkpoints/last.ckpt ] && echo --ckpt_path last)
	$(CLI) generate --ckpt_path runs/quickstart/checkpoints/last.ckpt --prompt "$(PROMPT)" --max_new_tokens 200 --seed 1337

test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs data/classics
