"""``evoray bench uigenie-sampling``: what the agent's sampling costs in one padded batch and in
length-sorted batches (``sampler.batch_tokens``), on a UI-Genie run's own prompts.

The agent's prompts are screen renderings of very different lengths; one batch pads every row to
the longest and decodes every row until the last one ends. The benchmark samples the same prompts
(``RUN_DIR/datasets/agent_gen0.parquet``, the seed steps) with the run's latest agent for each
budget and each number of samples per prompt (1: greedy decoding and verification; the demo's beam
search asks ``beam.expansions`` = 5), the median of ``--repeats`` after one warm-up. ``--backend
vllm`` samples the same prompts through vLLM's engine instead (in a venv with vllm, such as
``make vllm-venv``; the budgets are the transformers backend's and do not apply; ``--threads 2``
binds the engine to two cores, as ``sampler.threads`` does).

    evoray bench uigenie-sampling --run-dir runs/uigenie-demo-… [--prompts 20 96] [--budgets 0 2048 8192]
    .venv-vllm/bin/evoray bench uigenie-sampling --run-dir runs/uigenie-demo-… --backend vllm [--threads 2]
"""
from __future__ import annotations

import platform
import random
from datetime import datetime, timezone
from pathlib import Path


def add_args(p) -> None:
    p.add_argument("--run-dir", required=True, help="a UI-Genie run directory: its seed-step prompts "
                   "and its latest agent checkpoint (the base model when it has none)")
    p.add_argument("--prompts", type=int, nargs="+", default=[20, 96], help="prompts per call")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 5], help="samples per prompt")
    p.add_argument("--budgets", type=int, nargs="+", default=[0, 2048, 8192],
                   help="sampler.batch_tokens values; 0: one batch")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                   help="the sampler backend (vllm: --budgets does not apply)")
    p.add_argument("--threads", type=int, default=None, help="sampler.threads (vllm on a CPU: the "
                   "engine's bound cores, none held back; default: vLLM's binding)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)


def load_agent(run_dir: Path, backend: str = "transformers", threads: int | None = None):
    """A Sampler with the run's model, the agent's system prompt and its latest fine-tuned layers."""
    import yaml

    from actors.sampler import Sampler, SamplerSettings
    from actors.sft import read_checkpoint
    from jobs.uigenie.policy import SYSTEM_PROMPT
    from services.run_store import RunStore
    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"]
    sampler = Sampler(SamplerSettings(model, backend=backend, threads=threads, system_prompt=SYSTEM_PROMPT))
    ckpt = RunStore(run_dir).latest_checkpoint()
    if ckpt is None or not (ckpt / "agent").is_dir():
        return sampler, model, "base model"
    sampler.load_weights(read_checkpoint(ckpt / "agent")[0])
    return sampler, model, str(ckpt / "agent")


def run(args) -> int:
    import pyarrow.parquet as pq
    import torch
    from rich.console import Console
    from rich.table import Table

    from jobs.uigenie.policy import propose
    from services.bench import write_result
    from services.bench_sampler import timed
    run_dir = Path(args.run_dir)
    data = run_dir / "datasets" / "agent_gen0.parquet"
    if not data.is_file():
        raise ValueError(f"{data} does not exist: --run-dir must be a UI-Genie run past generation 0")
    texts = [r["prompt"] for r in pq.read_table(data).to_pylist()]
    console = Console()
    sampler, model, agent = load_agent(run_dir, args.backend, args.threads)
    budgets = args.budgets if args.backend == "transformers" else [None]
    rows = []
    for count in args.prompts:
        prompts = random.Random(count).sample(texts, min(count, len(texts)))
        lengths = sorted(len(sampler.encode([{"role": "user", "content": t}])) for t in prompts)
        for n in args.samples:
            for budget in budgets:
                if budget is not None:
                    sampler.backend.batch_tokens = budget or None
                console.print(f"{len(prompts)} prompts × {n}, {batching(budget)} …")
                seconds, replies = timed(lambda: sum(len(p) for p in propose(
                    sampler.generate, prompts, n, 1.0, args.max_new_tokens, seed=0)), args.repeats)
                rows.append({"prompts": len(prompts), "prompt_tokens_min": lengths[0],
                             "prompt_tokens_max": lengths[-1], "samples": n, "batch_tokens": budget,
                             "seconds": seconds, "replies": replies})
    table = Table(title=f"agent sampling ({args.backend}) on {run_dir.name} ({agent}), median of {args.repeats}")
    for col in ("prompts (tokens)", "samples", "batching", "seconds", "vs one batch"):
        table.add_column(col, justify="right")
    for r in rows:
        one = next((x["seconds"] for x in rows if x["prompts"] == r["prompts"] and x["samples"] == r["samples"]
                    and x["batch_tokens"] == 0), None)
        table.add_row(f"{r['prompts']} ({r['prompt_tokens_min']}–{r['prompt_tokens_max']})", str(r["samples"]),
                      batching(r["batch_tokens"]), f"{r['seconds']:.1f}",
                      f"{one / r['seconds']:.2f}×" if one else "-")
    console.print(table)
    result = {"benchmark": "uigenie-sampling", "date": datetime.now(timezone.utc).isoformat(),
              "run_dir": str(run_dir), "model": model, "agent": agent, "backend": args.backend,
              "threads": args.threads, "repeats": args.repeats,
              "max_new_tokens": args.max_new_tokens, "host": platform.node(),
              "cpus": torch.get_num_threads(), "rows": rows}
    name = "uigenie-sampling" + ("-vllm" if args.backend == "vllm" else "")
    console.print(f"wrote {write_result(args.out, name, result)}")
    return 0


def batching(budget) -> str:
    """A row's batching: vLLM schedules its own (None), else one padded batch (0) or a budget."""
    return "vLLM's scheduler" if budget is None else f"batch_tokens {budget}" if budget else "one batch"
