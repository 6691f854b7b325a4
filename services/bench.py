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
    """Learner → samplers with the real actors (object store, broadcast in buckets, or CUDA IPC),
    against an in-process ``copy_`` of the same tensors on the same device (on a GPU: device to
    device). ``ipc`` puts the learner and the samplers on one GPU (as colocated placement does);
    the others give each actor a GPU of its own."""
    import ray
    import torch

    from actors.learner import Learner, LearnerSettings
    from actors.sampler import Sampler, SamplerSettings
    from services.config import RayConfig
    from actors.weights.sync import WeightSync
    from services.controller import start_ray

    console = Console()
    gpu = args.device == "cuda"
    if args.transport == "ipc" and not gpu:
        raise ValueError("--transport ipc needs --device cuda (CUDA IPC)")
    gpus = (1 / (1 + args.samplers) if args.transport == "ipc" else 1) if gpu else 0
    start_ray(RayConfig())
    dtype = "bfloat16" if gpu else "float32"
    samplers = [ray.remote(Sampler).options(num_cpus=0.5, num_gpus=gpus).remote(
        SamplerSettings(args.model, dtype=dtype, device=args.device)) for _ in range(args.samplers)]
    learner = ray.remote(Learner).options(num_cpus=0.5, num_gpus=gpus).remote(
        LearnerSettings(model=args.model, device=args.device, sync_dtype=dtype if gpu else None))
    ray.get([a.ready.remote() for a in samplers + [learner]])
    transports = ["object_store", "broadcast"] if args.transport == "both" else [args.transport]
    medians = {}
    for transport in transports:
        sync = WeightSync(learner, samplers, transport=transport, bucket_mb=args.bucket_mb)
        sync.sync()  # warm-up: maps the object store / forms the group
        syncs = [sync.sync() for _ in range(args.repeats)]
        medians[transport] = statistics.median(s["time/sync_s"] for s in syncs)
    nbytes = syncs[0]["sync/mb"] * 1e6

    # the baseline: the same bytes copied in place inside one process, on the same device
    from actors.model_loading import load_causal_lm
    model, _ = load_causal_lm(args.model, dtype, args.device)
    params = [p.detach() for p in model.parameters()]
    copies = [p.clone() for p in params]
    copy_s = []
    for _ in range(args.repeats):
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for dst, src in zip(copies, params):
            dst.copy_(src)
        if gpu:
            torch.cuda.synchronize()
        copy_s.append(time.perf_counter() - t0)
    copy = statistics.median(copy_s)
    mb = nbytes / 1e6
    result = {
        "benchmark": "weight-sync", "date": datetime.now(timezone.utc).isoformat(),
        "model": args.model, "samplers": args.samplers, "repeats": args.repeats, "mb": mb,
        "bucket_mb": args.bucket_mb, "inprocess_copy_s": copy, "inprocess_copy_mb_per_s": mb / copy,
        "host": platform.node(), "cpus": torch.get_num_threads(), "device": args.device,
        "gpu": torch.cuda.get_device_name() if gpu else None,
    }
    for transport, seconds in medians.items():
        result[f"{transport}_s"] = seconds
        result[f"{transport}_mb_per_s"] = mb * args.samplers / seconds
        result[f"{transport}_vs_copy"] = (mb * args.samplers / seconds) / (mb / copy)
    table = Table(title=f"weight sync: {args.model}, {mb:.0f} MB, {args.samplers} sampler(s), "
                        f"{args.device}, median of {args.repeats}")
    for col in ("path", "seconds", "MB/s", "vs copy_"):
        table.add_column(col, justify="right" if col != "path" else "left")
    labels = {"object_store": "learner → object store → samplers (pack, put once, get, copy_)",
              "broadcast": f"learner → samplers, broadcast in {args.bucket_mb:g} MB buckets",
              "ipc": "learner → samplers on its GPU, CUDA IPC (one buffer, copy_)"}
    for transport in medians:
        table.add_row(labels[transport], f"{result[f'{transport}_s']:.3f}",
                      f"{result[f'{transport}_mb_per_s']:.0f}", f"{result[f'{transport}_vs_copy']:.2f}")
    table.add_row("in-process copy_ of the same tensors", f"{copy:.3f}", f"{mb / copy:.0f}", "1.00")
    console.print(table)
    console.print(f"wrote {write_result(args.out, 'weight-sync', result)}")
    return 0


def weight_sync_args(p) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samplers", type=int, default=1, help="sampler actors to sync")
    p.add_argument("--transport", choices=["object_store", "broadcast", "ipc", "both"], default="both",
                   help="both: object_store and broadcast; ipc: every actor on one GPU (needs --device cuda)")
    p.add_argument("--bucket-mb", type=float, default=256)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: learner and each sampler on a GPU of their own (all on one with --transport ipc)")


def lazy(module: str, attr: str):
    """A benchmark's function, its module imported only when it runs (each pulls in heavy
    dependencies)."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(module), attr)(*args)
    return call


def benchmarks() -> dict:
    """name → Bench: the shared ones here and every registered job's; ``--out`` is added for all."""
    from services.registry import Bench, all_jobs
    out = {"weight-sync": Bench("learner → samplers weight sync against an in-process copy",
                                weight_sync_args, bench_weight_sync),
           "sampler": Bench("generation tokens/s: the vLLM backend, the transformers backend, plain HF generate",
                            lazy("services.bench_sampler", "add_args"), lazy("services.bench_sampler", "run")),
           "sft": Bench("a fine-tuning step with the frozen layers run every step vs kept per row",
                        lazy("services.bench_sft", "add_args"), lazy("services.bench_sft", "run"))}
    for job in all_jobs():
        out.update(job.benches)
    return out
