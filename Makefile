# The two commands of the README: `make repro` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup repro test bench bench-all bench-cluster params dataset clean

setup: $(VENV)/.installed dataset

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the wheels lie on this disk; an unpinned torch pulls gigabytes
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package where apt-get can install it; otherwise the prepare
# stage looks in data/raw/fashion-mnist/ and finally uses torchvision's downloader.
dataset:
	@if [ ! -f $(FASHION) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "note: apt-get could not install dataset-fashion-mnist; prepare will try data/raw/ then download"; \
	fi

# params.yaml from conf/config.yaml (what `dvc exp run` does before every run)
params: $(VENV)/.installed
	$(PY) -m lottery.params

repro: setup
	test -d .git || git init -q
	$(PY) -m lottery.params --check
	dvc repro

test: setup
	$(PY) -m pytest -q -n 2

# every benchmark runs even when one fails; make bench then exits non-zero naming the failed ones.
# bench (target: within 10 min on 2 quiet cores): the step, whole rounds sparse vs dense with the paper's estimate,
# sparse execution, data-parallel rounds and the image loader; bench-all adds the long rows
BENCH = train_step sparse_step data_parallel folder_loader
bench: setup
	@failed=""; for b in $(BENCH); do \
	  $(PY) benchmarks/$$b.py || failed="$$failed $$b"; \
	done; if [ -n "$$failed" ]; then echo "make bench: failed:$$failed" >&2; exit 1; fi

bench-all: setup
	@failed=""; for b in $(BENCH) presets generic instability resnet50; do \
	  $(PY) benchmarks/$$b.py || failed="$$failed $$b"; \
	done; if [ -n "$$failed" ]; then echo "make bench-all: failed:$$failed" >&2; exit 1; fi

# Ray clusters on this machine (1 vs 2 worker nodes, and one experiment against a local run): minutes
bench-cluster: setup
	$(PY) benchmarks/cluster.py
