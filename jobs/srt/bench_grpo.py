"""``evoray bench grpo-step``: the time of one GRPO step, split into generation, reward, training
and weight sync, on a Qwen2-shaped model built from a config with random weights (no download).

Next to it: Hugging Face TRL's ``GRPOTrainer`` on the same model, batch and lengths (when ``trl``
is installed; its ``generate`` is timed separately), and the decode roofline: the bytes one decoding
step must read (all weights, plus the KV cache of every sequence) over the memory bandwidth measured
here with a large copy. Every completion is forced to full length (no EOS), as in the benchmark's specification.

The ``qwen2-0.4b`` preset is the benchmarked shape (hidden 896, 24 layers, 14/2 heads, intermediate
4864, vocab 32,000); ``tiny`` runs the same code in seconds on a CPU.
"""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

PRESETS = {
    "qwen2-0.4b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864, vocab_size=32000),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512),
}
PAD, EOS = 0, 1


def add_args(p) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.4b")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="completions per prompt")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    p.add_argument("--static-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="evoray's sampler: HF generate with a static, compiled KV cache (default), "
                        "or its own prefill-sharing loop (--no-static-cache)")
    p.add_argument("--baseline", choices=["trl", "none"], default="trl",
                   help="trl: also time TRL's GRPOTrainer (skipped with a note when trl is missing)")


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``t0 … tN``: text and ids map one to one, so TRL (which takes
    text prompts) gets exactly the same token ids as evoray."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=f"t{PAD}", eos_token=f"t{EOS}", unk_token="t2")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def build_checkpoint(preset: str, root: Path) -> Path:
    """A random Qwen2 of the preset's shape with its tokenizer, saved once as an HF directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    path = root / f"bench-{preset}"
    if (path / "config.json").is_file():
        return path
    from actors.storage import save_pretrained_atomically
    torch.manual_seed(0)
    config = Qwen2Config(**PRESETS[preset], max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD)
    save_pretrained_atomically(path, Qwen2ForCausalLM(config), word_tokenizer(config.vocab_size))
    return path


def n_params(preset: str) -> int:
    c = PRESETS[preset]
    h, kv = c["hidden_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 2 * kv + h + 3 * h * c["intermediate_size"] + 2 * h
    return c["vocab_size"] * h + c["num_hidden_layers"] * layer + h


def decode_roofline(preset: str, batch: int, prompt: int, new: int, bytes_per_s: float, dtype_bytes: int = 2) -> float:
    """Tokens/s if every decoding step only had to read its bytes once: all weights, plus the KV
    cache of ``batch`` sequences at their current length (prompt + tokens so far)."""
    c = PRESETS[preset]
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    kv_per_token = c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * head_dim * dtype_bytes
    weights = n_params(preset) * dtype_bytes
    seconds = sum((weights + batch * (prompt + t) * kv_per_token) / bytes_per_s for t in range(new))
    return batch * new / seconds


def memory_bandwidth(device: str, mb: int) -> float:
    """Bytes/s of a large on-device copy (each byte read once and written once)."""
    import torch
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() / min(times)


def sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evoray_steps(path: Path, args, device: str, prompts: list[list[int]]) -> list[dict]:
    """evoray's step, timed phase by phase: sampler → majority vote → learner → weight sync."""
    import torch

    from actors.grpo import ADVANTAGE_ESTIMATORS
    from actors.learner import Learner, LearnerSettings, Sample
    from actors.sampler import Sampler, SamplerSettings, SamplingParams
    from jobs.srt.rewards import majority_vote
    gpu = device.startswith("cuda")
    sampler = Sampler(SamplerSettings(str(path), dtype="bfloat16" if gpu else "float32", device=device,
                                      static_cache=args.static_cache))
    sampler.backend.eos_ids = set()          # forced to full length
    learner = Learner(LearnerSettings(str(path), device=device, autocast="bf16" if gpu else "none",
                                      sync_dtype="bfloat16" if gpu else None, lr=1e-6,
                                      micro_batch_tokens=args.samples * (args.prompt_tokens + args.new_tokens) * 2))
    advantage = ADVANTAGE_ESTIMATORS["grpo"]
    results = []
    for step in range(args.steps + 1):
        times = {}
        sync(device)
        t0 = time.perf_counter()
        out = sampler.backend.generate(prompts, SamplingParams(n=args.samples, temperature=1.0,
                                                               max_new_tokens=args.new_tokens, seed=step))
        sync(device)
        times["generation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples = []
        for g in range(len(prompts)):
            group = out[g * args.samples:(g + 1) * args.samples]
            vote = majority_vote([str(ids[-1] % 4) for _, ids, _, _ in group])   # a vote with a few classes
            for (pi, ids, lps, _), a in zip(group, advantage(torch.tensor(vote.rewards)).tolist()):
                samples.append(Sample(prompts[pi], ids, a, lps))
        times["reward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = learner.train_step(samples)
        sync(device)
        times["training"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        times["sync_bytes"] = sync_weights(learner, sampler)
        sync(device)
        times["sync"] = time.perf_counter() - t0
        times["tokens"] = sum(len(ids) for _, ids, _, _ in out)
        times["logprob_gap"] = stats.get("sampler_logprob_gap", 0.0)
        if step:                              # step 0 is the warm-up
            results.append(times)
    return results


def sync_weights(learner, sampler) -> int:
    """Learner → sampler in one process: the colocated CUDA IPC path's work (pack the weights, cast
    to the sync dtype, into one buffer on the learner's device; copy into the sampler — between
    processes the mapping adds no copy). Returns the bytes moved."""
    from actors.weights.layout import views, whole
    from actors.weights.pack import copy_into
    flat, spec = learner.pack_on_device()
    copy_into(sampler.backend.model, views(flat, spec, whole(spec)))
    return flat.numel()


def trl_steps(path: Path, args, device: str, prompts: list[list[int]], out_dir: Path) -> list[dict] | str:
    """TRL's GRPOTrainer on the same checkpoint and batch; per step: total and ``generate`` time.
    Returns a message instead when trl is not installed."""
    try:
        import trl
        from datasets import Dataset
    except ImportError:
        return "trl is not installed (pip install trl): no TRL baseline"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    gen_times: list[float] = []
    plain_generate = model.generate

    def timed_generate(*a, **kw):
        sync(device)
        t0 = time.perf_counter()
        result = plain_generate(*a, **kw)
        sync(device)
        gen_times.append(time.perf_counter() - t0)
        return result

    model.generate = timed_generate
    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync(device)
            step_times.append(time.perf_counter() - self.t0)

    batch = len(prompts) * args.samples
    config = trl.GRPOConfig(
        output_dir=str(out_dir), max_steps=args.steps + 1, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=args.samples, max_completion_length=args.new_tokens,
        temperature=1.0, learning_rate=1e-6, bf16=device.startswith("cuda"), use_cpu=device == "cpu",
        logging_steps=1, save_strategy="no", report_to=[], beta=0.0,
        generation_kwargs={"min_new_tokens": args.new_tokens}, disable_tqdm=True)
    data = Dataset.from_dict({"prompt": [tok.decode(p) for p in prompts] * (args.steps + 2)})
    reward = lambda completions, **_: [float(len(c) % 2) for c in completions]
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                              processing_class=tok, callbacks=[StepTimer()])
    trainer.train()
    return [{"step": s, "generate": g} for s, g in zip(step_times[1:], gen_times[1:])]


def run(args) -> int:
    import tempfile

    import torch

    from actors.model_loading import cache_root
    from services.bench import write_result
    console = Console()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    path = build_checkpoint(args.preset, cache_root() / "models")
    gen = torch.Generator().manual_seed(0)
    vocab = PRESETS[args.preset]["vocab_size"]
    prompts = torch.randint(3, vocab, (args.prompts, args.prompt_tokens), generator=gen).tolist()
    console.print(f"grpo-step: {args.preset} ({n_params(args.preset) / 1e6:.0f} M parameters) on {device}; "
                  f"{args.prompts} prompts × {args.samples} samples × {args.new_tokens} new tokens")
    ours = evoray_steps(path, args, device, prompts)
    median = {k: statistics.median(r[k] for r in ours) for k in ("generation", "reward", "training", "sync")}
    total = sum(median.values())
    tokens = ours[0]["tokens"]
    bandwidth = memory_bandwidth(device, 1024 if device.startswith("cuda") else 256)
    roofline = decode_roofline(args.preset, args.prompts * args.samples, args.prompt_tokens, args.new_tokens,
                               bandwidth, 2 if device.startswith("cuda") else 4)
    baseline: list[dict] | str = "not run (--baseline none)"
    if args.baseline == "trl":
        with tempfile.TemporaryDirectory() as tmp:
            baseline = trl_steps(path, args, device, prompts, Path(tmp))
    result = {"benchmark": "grpo-step", "date": datetime.now(timezone.utc).isoformat(), "device": device,
              "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "preset": args.preset, "params": n_params(args.preset), "prompts": args.prompts,
              "samples": args.samples, "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens,
              "steps": args.steps, "static_cache": args.static_cache, "evoray_s": median, "evoray_step_s": total,
              "evoray_tokens_per_s": tokens / median["generation"], "sync_bytes": ours[0]["sync_bytes"],
              "sync_bytes_per_s": ours[0]["sync_bytes"] / median["sync"],
              "memory_bytes_per_s": bandwidth, "roofline_tokens_per_s": roofline,
              "versions": {"torch": torch.__version__}}
    table = Table(title=f"one GRPO step, median of {args.steps} ({device})")
    for col in ("", "step s", "gen s", "reward s", "train s", "sync s", "gen tok/s"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("evoray", f"{total:.2f}", *(f"{median[k]:.3f}" for k in ("generation", "reward", "training", "sync")),
                  f"{tokens / median['generation']:,.0f}")
    if isinstance(baseline, list) and baseline:
        import trl
        step = statistics.median(r["step"] for r in baseline)
        gen_s = statistics.median(r["generate"] for r in baseline)
        result.update(trl_step_s=step, trl_generate_s=gen_s, trl_tokens_per_s=tokens / gen_s,
                      speedup=step / total)
        result["versions"]["trl"] = trl.__version__
        table.add_row(f"TRL {trl.__version__}", f"{step:.2f}", f"{gen_s:.3f}", "", "", "",
                      f"{tokens / gen_s:,.0f}")
    table.add_row("roofline", "", f"{tokens / roofline:.3f}", "", "", "", f"{roofline:,.0f}")
    console.print(table)
    console.print(f"memory bandwidth {bandwidth / 1e9:.0f} GB/s (copy); weight sync "
                  f"{result['sync_bytes'] / 1e6:.0f} MB at {result['sync_bytes_per_s'] / 1e9:.2f} GB/s")
    if isinstance(baseline, str):
        console.print(f"TRL: {baseline}")
    elif "speedup" in result:
        console.print(f"evoray's step is {result['speedup']:.2f}× TRL's")
    console.print(f"wrote {write_result(args.out, 'grpo-step', result)}")
    return 0
