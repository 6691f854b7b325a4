"""``evoray bench sampler``: generation tokens/s of the vLLM backend, the transformers backend and
plain Hugging Face ``generate``, side by side on the SRT demo's workload (16 one-digit arithmetic
prompts × 8 samples × 12 new tokens, temperature 1; ``jobs/configs/srt-demo.yaml``).

Each path generates the same prompt token ids; a rate counts the tokens actually produced (a
completion may stop at EOS) over the wall time of the whole batch, the median of ``--repeats``
after one warm-up. vLLM runs when it is installed (``make bench-sampler`` builds its venv), else
its row says why it is missing.
"""
from __future__ import annotations

import platform
import random
import statistics
import time
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

TEMPLATE = "What is {question}? Answer with just the number."    # SRT's default prompt template


def add_args(p) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="completions per prompt")
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--kv-cache-gb", type=int, default=1, help="vLLM on CPU: its KV cache")
    p.add_argument("--skip-vllm", action="store_true", help="only the two Hugging Face paths")


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [TEMPLATE.format(question=f"{rng.randint(0, 9)} + {rng.randint(0, 9)}") for _ in range(n)]


def timed(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, tokens of the last run) of ``fn() -> tokens`` after one warm-up run."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), tokens


def sampler_rate(backend, prompt_ids, args) -> tuple[float, int]:
    from actors.sampler import SamplingParams
    params = SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    return timed(lambda: sum(len(out[1]) for out in backend.generate(prompt_ids, params)), args.repeats)


def hf_generate_rate(model, tokenizer, prompt_ids, args) -> tuple[float, int]:
    """``model.generate`` as a Hugging Face user calls it: left-padded batch, n return sequences."""
    import torch
    width = max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])

    def run() -> int:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                 top_p=1.0, max_new_tokens=args.new_tokens, pad_token_id=pad,
                                 num_return_sequences=args.samples)
        eos = out[:, width:] == tokenizer.eos_token_id      # a row ends at its first EOS (counted)
        return int(torch.where(eos.any(1), eos.int().argmax(1) + 1, eos.shape[1]).sum())
    return timed(run, args.repeats)


def run(args) -> int:
    import torch

    from actors.sampler import Sampler, SamplerSettings
    from services.bench import write_result

    console = Console()
    sampler = Sampler(SamplerSettings(args.model, dtype=args.dtype))
    prompt_ids = [sampler.encode([{"role": "user", "content": q}]) for q in questions(args.prompts)]
    rates: dict[str, dict] = {}
    seconds, tokens = hf_generate_rate(sampler.backend.model, sampler.backend.tokenizer, prompt_ids, args)
    rates["hf_generate"] = {"seconds": seconds, "tokens": tokens}
    seconds, tokens = sampler_rate(sampler.backend, prompt_ids, args)
    rates["transformers"] = {"seconds": seconds, "tokens": tokens}
    del sampler
    vllm_note = vllm_rate(args, prompt_ids, rates) if not args.skip_vllm else "skipped (--skip-vllm)"
    for r in rates.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    result = {"benchmark": "sampler", "date": datetime.now(timezone.utc).isoformat(), "model": args.model,
              "dtype": args.dtype, "prompts": args.prompts, "samples": args.samples,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "host": platform.node(),
              "cpus": torch.get_num_threads(), "rates": rates, "vllm": vllm_note}
    table = Table(title=f"sampler: {args.model} {args.dtype}, {args.prompts} prompts × {args.samples} "
                        f"× {args.new_tokens} tokens, median of {args.repeats}")
    for col in ("path", "seconds", "tokens", "tokens/s", "vs generate"):
        table.add_column(col, justify="left" if col == "path" else "right")
    labels = {"vllm": f"evoray vLLM backend ({vllm_note})", "transformers": "evoray transformers backend",
              "hf_generate": "Hugging Face generate"}
    base = rates["hf_generate"]["tokens_per_s"]
    for key in ("vllm", "transformers", "hf_generate"):
        if key in rates:
            r = rates[key]
            table.add_row(labels[key], f"{r['seconds']:.2f}", str(r["tokens"]), f"{r['tokens_per_s']:.1f}",
                          f"{r['tokens_per_s'] / base:.1f}×")
    if "vllm" not in rates:
        table.add_row(f"vLLM: {vllm_note}", "-", "-", "-", "-")
    console.print(table)
    console.print(f"wrote {write_result(args.out, 'sampler', result)}")
    return 0


def vllm_rate(args, prompt_ids, rates: dict) -> str:
    """Adds the vLLM row when vLLM is installed; returns its version and engine start (or why not)."""
    try:
        import vllm
    except ImportError:
        return "not installed: make bench-sampler runs it in the vLLM venv"
    from actors.sampler import Sampler, SamplerSettings
    t0 = time.perf_counter()
    sampler = Sampler(SamplerSettings(args.model, backend="vllm", dtype=args.dtype,
                                      extra={"kv_cache_space_gb": args.kv_cache_gb, "max_model_len": 1024}))
    start_s = time.perf_counter() - t0
    seconds, tokens = sampler_rate(sampler.backend, prompt_ids, args)
    rates["vllm"] = {"seconds": seconds, "tokens": tokens, "engine_start_s": start_s}
    return f"vllm {vllm.__version__}, engine start {start_s:.0f} s"
