"""Learner actor: one GRPO policy update per batch of sampled completions (torch, fp32 master weights).

A batch is a list of samples, each (prompt ids, completion ids, advantage), a prompt's samples
next to each other. Each prompt is run once and its samples on top of its KV cache (see
``completion_logprobs``). Micro-batches are whole prompt groups cut by a token budget and their
gradients accumulated; aggregation is exact across micro-batches.

One optimizer step per batch, so π_old is the current policy (ratio 1, gradient −A∇logπ unless
clipped); the sampler's log-probs are compared against the learner's as a check of the sync.

Data parallel (``world_size`` > 1): one Learner actor per GPU (or CPU process), joined in a
torch.distributed group (NCCL on GPUs, gloo on CPUs). Rank 0 is the role's face: it splits the
batch's prompt groups over the ranks by tokens, every rank runs its share with the *global* token
and sequence counts in the aggregation, the gradients are summed across ranks, and every rank
takes the same optimizer step — so the update equals the single-process one (tested).
"""
from __future__ import annotations

import json
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from actors import grpo
from actors.generation import cache_kwarg, left_pad, output_cache
from actors.weight_sync import pack_state


@dataclass
class LearnerSettings:
    model: str
    lr: float = 3e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.28
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    micro_batch_tokens: int = 4096
    autocast: str = "none"
    threads: int | None = None
    device: str = "cpu"
    sync_dtype: str | None = None     # cast weights for the samplers (e.g. bfloat16 for vLLM)
    seed: int = 0
    trainable_layers: int | None = None   # train only the top N decoder layers (+ final norm)
    tis_cap: float | None = None      # truncated importance sampling against the sampler's policy
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time
    shard_optimizer: bool = False     # data parallel: ZeRO-1, Adam state split across the ranks


@dataclass
class Sample:
    prompt_ids: list[int]
    token_ids: list[int]
    advantage: float
    sampler_logprobs: list[float] | None = None
    image: bytes | None = None        # a vision-language prompt's image (its ids hold the placeholder)

    @property
    def prompt_key(self) -> tuple:
        """Samples of one prompt share this; an image's placeholder ids alone do not tell images apart."""
        return (tuple(self.prompt_ids), self.image)


def prompt_groups(samples: list[Sample]) -> list[list[int]]:
    """Indices of each run of consecutive samples of one prompt (a batch keeps a prompt's samples
    together)."""
    groups: list[list[int]] = []
    for i, smp in enumerate(samples):
        if groups and samples[groups[-1][0]].prompt_key == smp.prompt_key:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def completion_logprobs(model, samples: list[Sample], pad_id: int, device: str = "cpu", vision=None):
    """Log-probs of each completion token [S, T] and the completion mask [S, T].

    Each distinct prompt is run once (with gradients); its KV cache is indexed out to its
    samples, which are then run on top of it. The gradient through the shared prompt is the
    sum over its samples, exactly as if each sample had been run in full. Image prompts get
    their pixel inputs from ``vision`` (``actors.vision.VisionInputs``) in the prompt forward.
    """
    groups = prompt_groups(samples)
    prompts = [samples[g[0]] for g in groups]
    row_of = [row for row, g in enumerate(groups) for _ in g]
    prompt, prompt_mask = (t.to(device) for t in left_pad([p.prompt_ids for p in prompts], pad_id))
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    images = [p.image for p in prompts if p.image is not None]
    if images and vision is None:
        raise ValueError("samples with images need a vision-language model")
    out = model(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1, **(vision.pixel_inputs(images, device) if images else {}))
    rows = torch.tensor(row_of, device=device)
    first_logits = out.logits[:, -1][rows]                       # predicts completion token 0
    t = max(len(s.token_ids) for s in samples)
    comp = torch.full((len(samples), t), pad_id, dtype=torch.long)
    comp_mask = torch.zeros((len(samples), t), dtype=torch.long)
    for i, s in enumerate(samples):
        comp[i, :len(s.token_ids)] = torch.tensor(s.token_ids)
        comp_mask[i, :len(s.token_ids)] = 1
    comp, comp_mask = comp.to(device), comp_mask.to(device)
    logits = [first_logits[:, None]]
    if t > 1:
        cache = output_cache(out)
        cache.batch_select_indices(rows)
        mask = torch.cat([prompt_mask[rows], comp_mask[:, :-1]], 1)
        pos = positions[rows, -1:] + 1 + torch.arange(t - 1, device=device)
        logits.append(model(input_ids=comp[:, :-1], attention_mask=mask, position_ids=pos,
                            use_cache=True, **{cache_kwarg(model): cache}).logits)
    logits = torch.cat(logits, 1).float()
    logp = torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1)
    return logp, comp_mask.float()


def freeze_below(model, trainable_layers: int) -> None:
    """Freeze everything but the top ``trainable_layers`` decoder layers and the final norm.
    Backward then stops at the lowest trainable layer: on a CPU, fine-tuning the top third of a
    model costs about half a full step. (Tied embeddings stay frozen with the input embedding.)
    N at least the model's depth trains everything."""
    layers = model.model.layers
    if trainable_layers < 1:
        raise ValueError(f"trainable_layers must be at least 1, got {trainable_layers}")
    if trainable_layers >= len(layers):
        return
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers:]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)


class Learner:
    def __init__(self, settings: LearnerSettings):
        from actors.model_loading import load_policy
        torch.set_num_threads(settings.threads or os.cpu_count() or 1)
        torch.manual_seed(settings.seed)
        self.s = settings
        self.model, tokenizer, self.vision = load_policy(settings.model, "float32", settings.device)
        self.pad_id = tokenizer.pad_token_id
        if settings.trainable_layers is not None:
            freeze_below(self.model, settings.trainable_layers)
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.rank, self.world_size, self.peers = 0, 1, []
        self.ref = None
        if settings.kl_coef > 0:
            self.ref, _, _ = load_policy(settings.model, "float32", settings.device)
            self.ref.eval().requires_grad_(False)
        self.opt = self._optimizer(torch.optim.AdamW)
        self.version = 0

    def _optimizer(self, cls, **extra):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return cls(trainable, lr=self.s.lr, betas=self.s.betas, weight_decay=self.s.weight_decay, **extra)

    def ready(self) -> bool:
        return True

    # --- data parallel ----------------------------------------------------------------------------

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the process group."""
        import socket

        import ray
        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def join(self, rank: int, world_size: int, address: tuple[str, int], peers: list) -> int:
        """Join the data-parallel group; rank 0 gets the other ranks' handles (``peers``). Every rank
        starts from the same seeded weights; rank 0's are broadcast anyway, so they are equal."""
        import torch.distributed as dist
        backend = "nccl" if self.s.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address[0]}:{address[1]}", rank=rank,
                                world_size=world_size)
        self.rank, self.world_size, self.peers = rank, world_size, peers
        with torch.no_grad():
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)
        if self.s.shard_optimizer:      # ZeRO-1: each rank keeps the Adam state of its share only
            from torch.distributed.optim import ZeroRedundancyOptimizer
            self.opt = self._optimizer(ZeroRedundancyOptimizer, optimizer_class=torch.optim.AdamW)
        return rank

    def consolidate_optimizer(self) -> bool:
        """Gather a sharded optimizer's state on rank 0 (every rank takes part) for a checkpoint."""
        if self.s.shard_optimizer and self.world_size > 1:
            self.opt.consolidate_state_dict(to=0)
        return True

    def shards(self, samples: list[Sample]) -> list[list[int]]:
        """Sample indices per rank: whole prompt groups, each to the rank with the fewest tokens."""
        load, out = [0] * self.world_size, [[] for _ in range(self.world_size)]
        size = lambda g: sum(len(samples[i].prompt_ids) + len(samples[i].token_ids) for i in g)
        for g in sorted(prompt_groups(samples), key=size, reverse=True):
            r = load.index(min(load))
            out[r] += g
            load[r] += size(g)
        return [sorted(x) for x in out]

    def _sum_gradients(self) -> None:
        """All-reduce (sum) the gradients in one flat buffer; a rank without samples adds zeros."""
        import torch.distributed as dist
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    # --- the update -------------------------------------------------------------------------------

    def micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        """Chunks of whole prompt groups (consecutive samples with the same prompt) whose padded
        size stays within the token budget; a group larger than the budget is a chunk of its own."""
        batches, current = [], []
        for group in ([samples[i] for i in g] for g in prompt_groups(samples)):
            trial = current + group
            width = max(len(s.prompt_ids) + len(s.token_ids) for s in trial)
            if current and width * len(trial) > self.s.micro_batch_tokens:
                batches.append(current)
                trial = group
            current = trial
        return batches + ([current] if current else [])

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """One optimizer step on ``samples``; returns the step's metrics.

        With ``tis_cap`` (asynchronous rollouts: samples drawn by an older policy μ) each token's
        loss is weighted by w = min(π_θ(a)/μ(a), cap), detached — truncated importance sampling —
        and ``is_weights`` (each sample's mean w, in input order) comes back with the metrics.
        Data parallel, rank 0 hands each rank its share and sums their metrics."""
        if not samples:
            return {}
        totals = (float(sum(len(s.token_ids) for s in samples)), float(len(samples)))
        if self.world_size == 1:
            return self.train_shard(samples, totals)
        import ray
        shards = self.shards(samples)
        calls = [peer.train_shard.remote([samples[i] for i in shard], totals)
                 for peer, shard in zip(self.peers, shards[1:])]
        parts = [self.train_shard([samples[i] for i in shards[0]], totals)] + ray.get(calls)
        stats = {k: sum(p.get(k, 0.0) for p in parts) for k in ("loss", "kl", "sampler_logprob_gap")}
        stats.update(grad_norm=parts[0]["grad_norm"], tokens=totals[0], sequences=totals[1])
        if any("is_weights" in p for p in parts):
            weights = [0.0] * len(samples)
            for shard, part in zip(shards, parts):
                for i, w in zip(shard, part.get("is_weights", [])):
                    weights[i] = w
            stats["is_weights"] = weights
        return stats

    def train_shard(self, samples: list[Sample], totals: tuple[float, float]) -> dict:
        """This rank's share of a step: losses over ``samples`` aggregated with the whole batch's
        (tokens, sequences), gradients summed across ranks, one optimizer step."""
        total_tokens, total_seqs = totals
        aggregate = grpo.AGGREGATIONS[self.s.aggregation]
        policy_loss = grpo.POLICY_LOSSES[self.s.policy_loss]
        stats = {"loss": 0.0, "kl": 0.0, "sampler_logprob_gap": 0.0}
        is_weights: dict[int, float] = {}
        self.opt.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu" if self.s.device == "cpu" else "cuda", dtype=torch.bfloat16) \
            if self.s.autocast == "bf16" else nullcontext()
        for mb in self.micro_batches(samples):
            with autocast:
                logp, mask = completion_logprobs(self.model, mb, self.pad_id, self.s.device, self.vision)
            adv = torch.tensor([s.advantage for s in mb], dtype=torch.float32, device=logp.device)
            per_token = policy_loss(logp, logp.detach(), adv, clip_low=self.s.clip_low,
                                    clip_high=self.s.clip_high)
            behaviour = None
            if mb[0].sampler_logprobs is not None:
                behaviour = torch.zeros_like(logp)
                for i, s in enumerate(mb):
                    behaviour[i, :len(s.sampler_logprobs)] = torch.tensor(s.sampler_logprobs, device=logp.device)
            if self.s.tis_cap and behaviour is not None:
                w = torch.exp(logp.detach() - behaviour).clamp(max=self.s.tis_cap) * mask
                per_token = per_token * w
                for i, s in enumerate(mb):
                    is_weights[id(s)] = float(w[i].sum() / mask[i].sum().clamp(min=1))
            if self.ref is not None:
                with torch.no_grad(), autocast:
                    ref_logp, _ = completion_logprobs(self.ref, mb, self.pad_id, self.s.device, self.vision)
                kl = grpo.KL_ESTIMATORS[self.s.kl_estimator](logp, ref_logp)
                per_token = per_token + self.s.kl_coef * kl
                stats["kl"] += float(aggregate(kl.detach(), mask, total_tokens, total_seqs))
            loss = aggregate(per_token, mask, total_tokens, total_seqs)
            loss.backward()
            stats["loss"] += float(loss.detach())
            if behaviour is not None:
                stats["sampler_logprob_gap"] += float(aggregate((behaviour - logp.detach()).abs(), mask,
                                                                total_tokens, total_seqs))
        if self.world_size > 1:
            self._sum_gradients()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip))
        self.opt.step()
        self.version += 1
        stats["tokens"] = total_tokens
        stats["sequences"] = total_seqs
        if is_weights:
            stats["is_weights"] = [is_weights[id(s)] for s in samples]
        return stats

    # --- weights out ------------------------------------------------------------------------------

    def policy_version(self) -> int:
        return self.version

    def sync_spec(self):
        """What a broadcast sync sends, in order: (name, dtype, shape) per parameter."""
        from actors.weight_broadcast import weight_spec
        return weight_spec(self.model.named_parameters(), self._sync_dtype())

    def open_weight_group(self, address: tuple[str, int], world_size: int, bucket_mb: float) -> bool:
        """Rank 0 of the learner → samplers broadcast group (``actors/weight_broadcast.py``)."""
        from actors.weight_broadcast import BroadcastGroup
        self.weight_group = (BroadcastGroup(*address, 0, world_size, self.s.device), self.sync_spec(),
                             int(bucket_mb * 2**20))
        return True

    def broadcast_weights(self) -> int:
        """Send the current policy to every sampler in the group; returns the bytes sent."""
        group, spec, bucket = self.weight_group
        return group.send([p for _, p in self.model.named_parameters()], spec, bucket)

    def _sync_dtype(self):
        return getattr(torch, self.s.sync_dtype) if self.s.sync_dtype else None

    def export_weights(self):
        """Pack the current policy; return (bytes, weights). Inside Ray the weights are put in the
        object store once and returned as ``[ref]`` (a list, so Ray hands the reference on to the
        samplers instead of resolving it here). Outside Ray (a benchmark) the weights themselves."""
        packed = pack_state(self.model.named_parameters(), self.version, self._sync_dtype())
        ray = sys.modules.get("ray")      # imported by whoever started Ray; no Ray, no import
        return packed.nbytes, ([ray.put(packed)] if ray and ray.is_initialized() else packed)

    # --- checkpoints ------------------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Write model, optimizer and RNG state into ``directory`` (the caller renames it into place;
        a URI is written locally and uploaded)."""
        from services.storage import write_dir
        if self.s.shard_optimizer and self.peers:
            import ray
            calls = [peer.consolidate_optimizer.remote() for peer in self.peers]
            self.consolidate_optimizer()
            ray.get(calls)
        write_dir(directory, self._write_files)

    def _write_files(self, path: Path) -> None:
        from safetensors.torch import save_file
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()
                   if k != "lm_head.weight" or not self.model.config.tie_word_embeddings},
                  str(path / "model.safetensors"))
        torch.save({"optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, path / "trainer_state.pt")
        (path / "learner.json").write_text(json.dumps({"version": self.version}))

    def load(self, directory: str) -> int:
        """Every rank loads the same checkpoint (rank 0 tells its peers to)."""
        from services.storage import read_dir
        calls = [peer.load.remote(directory) for peer in self.peers]
        with read_dir(directory) as path:
            version = self._load_files(path)
        if calls:
            import ray
            ray.get(calls)
        return version

    def _load_files(self, path: Path) -> int:
        from safetensors.torch import load_file
        missing, unexpected = self.model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        state = torch.load(path / "trainer_state.pt", weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.version = json.loads((path / "learner.json").read_text())["version"]
        return self.version
