"""Supervised fine-tuning as a Ray Train worker function (``TorchTrainer(train_sft, ...)``).

The loss is the learner's: ``vanilla_pg`` with advantage 1 aggregated ``token-mean``, i.e. the
token-mean negative log-likelihood of the completions,

    L = −Σᵢ Σₜ wₜ log π(yᵢₜ | xᵢ, yᵢ<ₜ) / Σᵢ Σₜ wₜ      over the step's whole batch,

with w₀ = ``first_weight`` and wₜ = 1 after it, computed with the learner's code
(``actors.logprobs``, ``actors.grpo``). A reply's first token can be the decision that the rest
merely spells out (UI-Genie's action kind: ``type`` or ``click``); at weight 1 it is one token in
fifteen, and four epochs left a decision the easy tokens outweighed unlearned. The driver plans the
steps (``plan``: epochs × steps × row indices, so its random draws stay where they were); with W
workers each step's batch is dealt out, rank r taking rows r, r+W, …, and every rank divides by
the whole batch's token count. The model is wrapped by ``ray.train.torch.prepare_model`` (DDP,
gloo on CPUs), which averages gradients over ranks: each rank's loss is multiplied by W so the
average is the sum, and the step equals the one-process step on the whole batch. Micro-batches
(``micro_batch_tokens``) accumulate under ``no_sync``; a rank with no rows runs one row with
weight 0, since every rank must take part in each gradient all-reduce. Below ``trainable_layers``
each row's hidden states are computed once and kept for the later epochs
(``actors/frozen_layers.py``).

After every epoch rank 0 writes a checkpoint — the trainable parameters (``model.safetensors``)
and ``sft.json`` (epochs done, step losses, policy version) — through ``ray.train.report``. A
retried attempt (``FailureConfig.max_failures``) starts from the last one with a fresh optimizer.
The driver reads the final checkpoint (``read_checkpoint``) and hands the weights to the sampler.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from actors.progress_line import ProgressLine

WEIGHTS, META = "model.safetensors", "sft.json"


def plan(n: int, epochs: int, batch: int, rng) -> list[list[list[int]]]:
    """``epochs`` shuffled passes over rows 0..n−1 (``rng.shuffle``), one step per ``batch`` rows."""
    out = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        out.append([order[i:i + batch] for i in range(0, n, batch)])
    return out


def sft_step(model, opt, batch: list, rank: int, world: int, pad_id: int, budget: int,
             grad_clip: float, device: str = "cpu", first_weight: float = 1.0, frozen=None) -> float:
    """One optimizer step on ``batch`` (every rank holds the whole batch, runs its share); the
    whole batch's loss (see the module docstring)."""
    from actors.data_parallel import sum_over_ranks
    opt.zero_grad(set_to_none=True)
    total = backward_share(model, batch, rank, world, pad_id, budget, device, first_weight, frozen)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    opt.step()
    return sum_over_ranks(total, world)


def backward_share(model, batch: list, rank: int, world: int, pad_id: int, budget: int,
                   device: str = "cpu", first_weight: float = 1.0, frozen=None) -> float:
    """Gradients of rank ``rank``'s share of ``batch``, scaled so that their average over the
    ``world`` ranks is the gradient of the whole batch's loss; this share's part of that loss.
    ``frozen``: a ``FrozenBottom`` that keeps the frozen layers' output of each row."""
    from actors import grpo
    from actors.logprobs import completion_logprobs
    from actors.ppo_update import micro_batches
    mine = batch[rank::world]
    weight = 1.0 if mine else 0.0
    chunks = micro_batches(mine or batch[:1], budget)
    tokens = float(sum(len(s.token_ids) - 1 + first_weight for s in batch))
    total = 0.0
    for k, mb in enumerate(chunks):
        syncing = k == len(chunks) - 1 or not hasattr(model, "no_sync")
        with nullcontext() if syncing else model.no_sync():
            logp, mask = (frozen.logprobs(model, mb, pad_id, str(device)) if frozen is not None
                          else completion_logprobs(model, mb, pad_id, str(device), whole_sequences=True))
            ones = torch.ones(len(mb), device=logp.device)
            per_token = grpo.POLICY_LOSSES["vanilla_pg"](logp, logp.detach(), ones)
            mask[:, 0] *= first_weight
            loss = grpo.AGGREGATIONS["token-mean"](per_token, mask, tokens) * weight
            (loss * world).backward()
        total += float(loss.detach())
    return total


def train_sft(config: dict) -> None:
    """The worker function. ``config``: model, lr, grad_clip, trainable_layers, micro_batch_tokens,
    threads, seed, version, rows ([ref] of [(prompt ids, completion ids)]), plan, first_weight
    (optional, 1: plain token-mean), start ([ref] of
    the packed weights to start from, or None: the base model), fail_once (tests: a marker path;
    the first attempt fails after its first checkpoint)."""
    import ray
    import ray.train
    import ray.train.torch

    from actors.frozen_layers import FrozenBottom, frozen_depth
    from actors.logprobs import Sample
    from actors.model_loading import use_threads
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_threads(config.get("threads"))
    torch.manual_seed(config["seed"])
    model, pad_id = start_model(config)
    done, losses = 0, []
    resumed = ray.train.get_checkpoint()
    if resumed is not None:                     # a retried attempt: from the last epoch written
        with resumed.as_directory() as d:
            done, losses = load_into(model, Path(d))
    model = ray.train.torch.prepare_model(model)           # onto this worker's device; DDP when W > 1
    device = ray.train.torch.get_device()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"])
    frozen = FrozenBottom(model, depth) if (depth := frozen_depth(model)) else None
    rows = [Sample(list(p), list(t), 1.0) for p, t in ray.get(config["rows"][0])]
    # to the worker's own stdout: Ray Train's patched print would log the line and echo it, twice
    started, steps, taken, since = time.monotonic(), sum(len(e) for e in config["plan"][done:]), 0, 0
    progress = ProgressLine("fine-tuning", every=30.0, stream=sys.__stdout__, last=started)
    for epoch in range(done, len(config["plan"])):
        if frozen is not None and epoch == done + 1:
            # the first epoch also ran the frozen layers (2-3x slower): time left at the cached pace
            started, since = time.monotonic(), taken
        for idx in config["plan"][epoch]:
            losses.append(sft_step(model, opt, [rows[i] for i in idx], rank, world, pad_id,
                                   config["micro_batch_tokens"], config["grad_clip"], device,
                                   config.get("first_weight", 1.0), frozen))
            taken += 1
            if rank == 0:
                progress(f"epoch {epoch + 1}/{len(config['plan'])}, step", taken, steps, started,
                         losses[-1], since)
        report(model, rank, {"epoch": epoch + 1, "losses": losses, "version": config["version"]})
        fail_once(config.get("fail_once"))


def start_model(config: dict):
    """The policy in fp32, frozen below ``trainable_layers``, with the start weights loaded."""
    import ray

    from actors.learner import freeze_below
    from actors.model_loading import load_policy
    from actors.weights.pack import load_packed
    model, tokenizer, _ = load_policy(config["model"], "float32", "cpu")
    if config.get("trainable_layers") is not None:
        freeze_below(model, config["trainable_layers"])
    if config.get("start"):
        load_packed(model, ray.get(config["start"][0]))
    model.train()
    return model, tokenizer.pad_token_id


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (all others are the base model's), under the unwrapped names."""
    inner = getattr(model, "module", model)
    return {k: p.detach().cpu().contiguous() for k, p in inner.named_parameters() if p.requires_grad}


def report(model, rank: int, meta: dict) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint."""
    import ray.train
    metrics = {"epoch": meta["epoch"], "loss_first": meta["losses"][0] if meta["losses"] else 0.0,
               "loss_last": meta["losses"][-1] if meta["losses"] else 0.0, "steps": len(meta["losses"])}
    if rank != 0:
        ray.train.report(metrics)
        return
    from safetensors.torch import save_file
    with tempfile.TemporaryDirectory(prefix="evoray-sft-") as tmp:
        save_file(trainable_state(model), str(Path(tmp) / WEIGHTS))
        (Path(tmp) / META).write_text(json.dumps(meta))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def load_into(model, directory: Path) -> tuple[int, list[float]]:
    """A checkpoint's weights into ``model``; (epochs done, step losses so far)."""
    from safetensors.torch import load_file

    from actors.weights.pack import copy_into
    copy_into(model, load_file(str(directory / WEIGHTS)).items())
    meta = read_meta(directory)
    return meta["epoch"], list(meta["losses"])


def read_meta(directory: Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an SFT checkpoint (no {META})")
    return json.loads(path.read_text())


def read_checkpoint(directory: Path):
    """(packed weights, meta) of a checkpoint directory: the trainable parameters, ready for
    ``Sampler.load_weights`` and for the next ``train_sft`` to start from."""
    from safetensors.torch import load_file

    from actors.weights.pack import pack_state
    meta = read_meta(directory)
    return pack_state(sorted(load_file(str(Path(directory) / WEIGHTS)).items()), meta["version"]), meta


def fail_once(marker: str | None) -> None:
    """Tests of the retry path: the first call with a marker path creates it and raises."""
    if marker and not os.path.exists(marker):
        Path(marker).write_text("failed once\n")
        raise RuntimeError(f"injected failure (marker {marker})")
