"""One rollout batch → ``ppo_epochs`` × ``mini_batches`` optimizer steps, as veRL, OpenRLHF and TRL
(``num_iterations``) take them: the Learner's update loop (a mixin of ``actors.learner.Learner``).

The rollout batch is cut into ``mini_batches`` runs of whole prompt groups (a prompt's samples stay
together); each epoch takes one optimizer step per mini-batch, in the same order. π_old, the policy
the ratio ρ = π_θ/π_old is measured against, is fixed for the whole rollout:

- ``old_logprobs: recompute``: the learner's own log-probs before the first step, one no-grad pass
  with the same micro-batches (and placeholders) as the update;
- ``old_logprobs: sampler``: the sampler's log-probs (μ), so ρ = π_θ/μ from the first step on.

One epoch of one mini-batch is on-policy: π_old is the policy being updated, so its log-probs are
the update forward's own, detached (no extra pass; ρ = 1, the gradient −A∇logπ) — the learner's
behaviour before ``ppo_epochs`` existed, exactly.

Each optimizer step's loss is aggregated with its mini-batch's token and sequence counts summed over
all ranks (veRL's global token count for ``token-mean``): the micro-batches and ranks of a
mini-batch add up to the loss of the whole mini-batch, whatever the micro-batching. (OpenRLHF means
each micro-batch and divides by the accumulation steps, which equals this only when the
micro-batches hold as many tokens each.)

Data parallel: rank 0 plans the split (mini-batches, then each one's groups over the ranks) and
every rank runs the same mini-batches in the same order, so every rank takes the same number of
optimizer steps; under a lockstep strategy (fsdp2, deepspeed) each rank tops a mini-batch's
micro-batches up with placeholders to the busiest rank's count, in the π_old pass as in the update
(every forward and backward is a collective).

Logged per rollout (token means over each step's mini-batch, averaged over the steps):
``clip_fraction`` (tokens where the clipped PPO term is the larger loss, veRL's pg_clipfrac),
``approx_kl`` (k3 of KL(π_old‖π_θ): (ρ − 1) − log ρ), ``ratio_mean``, ``ratio_max``, ``ratio_min``.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from actors import grpo
from actors.logprobs import Sample, completion_logprobs, prompt_groups

MEANS = ("loss", "kl", "grad_norm", "clip_fraction", "approx_kl", "ratio_mean")   # over the steps
SUMS = ("sampler_logprob_gap",)                                                  # over the rollout


@dataclass
class MiniBatch:
    """One rank's share of one mini-batch: its samples, the whole mini-batch's (tokens, sequences)
    over all ranks, and how many micro-batches every rank runs on it (0: as many as it has)."""
    samples: list
    totals: tuple[float, float]
    micro_steps: int = 0


def batch_totals(samples) -> tuple[float, float]:
    """(completion tokens, sequences): the aggregation's denominators."""
    return float(sum(len(s.token_ids) for s in samples)), float(len(samples))


def split_groups(groups: list[list[int]], n: int) -> list[list[int]]:
    """``n`` consecutive runs of whole groups, as equal in groups as can be (fewer runs when there
    are fewer groups than ``n``); each run is the flat list of its sample indices."""
    n = min(n, len(groups))
    size, extra = divmod(len(groups), n)
    runs, at = [], 0
    for k in range(n):
        take = size + (k < extra)
        runs.append([i for g in groups[at:at + take] for i in g])
        at += take
    return runs


def micro_batches(samples: list, budget: int) -> list[list]:
    """Chunks of whole prompt groups (consecutive samples with the same prompt) whose padded
    size (rows × longest prompt + completion) stays within ``budget`` tokens; a group larger than
    the budget is a chunk of its own."""
    batches, current = [], []
    for group in ([samples[i] for i in g] for g in prompt_groups(samples)):
        trial = current + group
        width = max(len(s.prompt_ids) + len(s.token_ids) for s in trial)
        if current and width * len(trial) > budget:
            batches.append(current)
            trial = group
        current = trial
    return batches + ([current] if current else [])


def ratio_stats(logp, old_logp, adv, mask, clip_low: float, clip_high: float, tokens: float) -> dict:
    """Diagnostics of ρ = exp(logπ − logπ_old) over the masked tokens, token sums divided by
    ``tokens``: clip_fraction = mean[−A·clip(ρ) > −Aρ], approx_kl = mean[(ρ − 1) − log ρ] (k3),
    ratio_mean; ratio_max / ratio_min (±inf without tokens)."""
    adv = adv if adv.dim() == logp.dim() else adv[:, None]
    log_ratio = torch.clamp(logp.detach() - old_logp, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped = (-adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high) > -adv * ratio).float()
    on = mask > 0
    mean = lambda x: float((x * mask).sum() / tokens)
    return {"clip_fraction": mean(clipped), "approx_kl": mean((ratio - 1) - log_ratio),
            "ratio_mean": mean(ratio),
            "ratio_max": float(ratio[on].max()) if on.any() else float("-inf"),
            "ratio_min": float(ratio[on].min()) if on.any() else float("inf")}


def combine(parts: list[dict]) -> dict:
    """The ranks' stats as one: the aggregated ones summed (each rank's is its share of the
    whole), ratio extremes over all ranks, the gradient norm rank 0's (all ranks have it)."""
    stats = {k: sum(p[k] for p in parts) for k in MEANS + SUMS if k != "grad_norm"}
    stats.update(grad_norm=parts[0]["grad_norm"], updates=parts[0]["updates"],
                 ratio_max=max(p["ratio_max"] for p in parts), ratio_min=min(p["ratio_min"] for p in parts))
    return stats


class PolicyUpdate:
    """The Learner's update loop; ``self`` has ``model``, ``strategy``, ``ref``, ``s`` (settings),
    ``pad_id``, ``vision``, ``rank``, ``world_size``, ``peers``, ``version``."""

    # --- splitting the batch ----------------------------------------------------------------------

    def micro_batches(self, samples: list) -> list[list]:
        return micro_batches(samples, self.s.micro_batch_tokens)

    def shards(self, samples: list) -> list[list[int]]:
        """Sample indices per rank: whole prompt groups, each to the rank with the fewest tokens."""
        load, out = [0] * self.world_size, [[] for _ in range(self.world_size)]
        size = lambda g: sum(len(samples[i].prompt_ids) + len(samples[i].token_ids) for i in g)
        for g in sorted(prompt_groups(samples), key=size, reverse=True):
            r = load.index(min(load))
            out[r] += g
            load[r] += size(g)
        return [sorted(x) for x in out]

    def plan(self, samples: list) -> list[list[list[int]]]:
        """Sample indices [rank][mini-batch]: the mini-batches, each split over the ranks."""
        per_rank = [[] for _ in range(self.world_size)]
        for mini in split_groups(prompt_groups(samples), self.s.mini_batches):
            for r, shard in enumerate(self.shards([samples[i] for i in mini])):
                per_rank[r].append([mini[j] for j in shard])
        return per_rank

    def work(self, samples: list, per_rank: list[list[list[int]]]) -> list[list[MiniBatch]]:
        """Each rank's ``MiniBatch``es; in lockstep every rank runs the busiest rank's micro-batch count."""
        out = [[] for _ in per_rank]
        for m in range(len(per_rank[0])):
            shares = [[samples[i] for i in mine[m]] for mine in per_rank]
            totals = batch_totals([s for share in shares for s in share])
            steps = max(len(self.micro_batches(s)) for s in shares) if self.strategy.lockstep else 0
            for r, share in enumerate(shares):
                out[r].append(MiniBatch(share, totals, steps))
        return out

    # --- the rollout ------------------------------------------------------------------------------

    def train_step(self, samples: list) -> dict[str, float]:
        """``ppo_epochs`` × ``mini_batches`` optimizer steps on one rollout batch; its metrics.

        With ``tis_cap`` (asynchronous rollouts: samples drawn by an older policy μ) each token's
        loss is weighted by w = min(π_old(a)/μ(a), cap), detached — truncated importance sampling —
        and ``is_weights`` (each sample's mean w, in input order) comes back with the metrics.
        Data parallel, rank 0 hands each rank its share and combines their metrics."""
        if not samples:
            return {}
        per_rank = self.plan(samples)
        work = self.work(samples, per_rank)
        rollout = batch_totals(samples)
        calls = [peer.train_rollout.remote(w, rollout) for peer, w in zip(self.peers, work[1:])]
        parts = [self.train_rollout(work[0], rollout)]
        if calls:
            import ray
            parts += ray.get(calls)
        stats = combine(parts)
        stats.update(tokens=rollout[0], sequences=rollout[1])
        if any("is_weights" in p for p in parts):
            weights = [0.0] * len(samples)
            for mine, part in zip(per_rank, parts):
                for i, w in zip([i for idx in mine for i in idx], part.get("is_weights", [])):
                    weights[i] = w
            stats["is_weights"] = weights
        return stats

    def train_rollout(self, minis: list[MiniBatch], rollout: tuple[float, float]) -> dict:
        """This rank's share of ``train_step``: π_old once, then every epoch one step per
        mini-batch. ``rollout``: the whole batch's totals (for the per-rollout sums)."""
        steps = self.s.ppo_epochs * len(minis)
        olds = self.old_logprobs(minis) if steps > 1 and self.s.old_logprobs == "recompute" else None
        acc = {k: 0.0 for k in MEANS + SUMS} | {"ratio_max": float("-inf"), "ratio_min": float("inf")}
        is_weights: dict[int, float] = {}
        for epoch in range(self.s.ppo_epochs):
            for m, mini in enumerate(minis):
                once = (rollout, is_weights) if epoch == 0 else None
                self.update(mini, olds[m] if olds else None, acc, once)
        self.version += 1
        stats = {k: acc[k] / steps for k in MEANS} | {k: acc[k] for k in SUMS}
        stats.update(ratio_max=acc["ratio_max"], ratio_min=acc["ratio_min"], updates=float(steps))
        if is_weights:
            stats["is_weights"] = [is_weights[id(s)] for mini in minis for s in mini.samples]
        return stats

    def _placeholder(self) -> list:
        """A one-token micro-batch whose loss is zero: a rank's forward when it has run out."""
        if getattr(self, "_placeholder_mb", None) is None:
            self._placeholder_mb = [Sample([self.pad_id], [self.pad_id], 0.0)]
        return self._placeholder_mb

    def _batches(self, mini: MiniBatch) -> list[list]:
        batches = self.micro_batches(mini.samples)
        return batches + [self._placeholder()] * (mini.micro_steps - len(batches))

    def _autocast(self):
        if self.s.autocast != "bf16":
            return nullcontext()
        return torch.autocast("cpu" if self.s.device == "cpu" else "cuda", dtype=torch.bfloat16)

    def _forward(self, mb: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Completion log-probs and mask of a micro-batch (a placeholder's mask is all zero)."""
        with self._autocast():
            logp, mask = completion_logprobs(self.strategy.module, mb, self.pad_id, self.s.device, self.vision,
                                             whole_sequences=self.s.gradient_checkpointing)
        return logp, torch.zeros_like(mask) if mb is self._placeholder() else mask

    @torch.no_grad()
    def old_logprobs(self, minis: list[MiniBatch]) -> list[list[torch.Tensor]]:
        """log π_old [S, T] per micro-batch of each mini-batch, before any step."""
        return [[self._forward(mb)[0] for mb in self._batches(mini)] for mini in minis]

    def update(self, mini: MiniBatch, olds, acc: dict, once) -> None:
        """One optimizer step on a mini-batch: gradients accumulated over its micro-batches,
        summed across ranks, clipped to ``grad_clip``. ``once`` (first epoch only): the rollout's
        totals and the dict the TIS weights go to."""
        self.strategy.zero_grad()
        for k, mb in enumerate(self._batches(mini)):
            self.micro_step(mb, olds[k] if olds else None, mini.totals, acc, once)
        acc["grad_norm"] += self.strategy.step()

    def micro_step(self, mb: list, old, totals, acc: dict, once) -> None:
        """Forward, loss and backward of one micro-batch (see the module docstring for the terms)."""
        aggregate = grpo.AGGREGATIONS[self.s.aggregation]
        logp, mask = self._forward(mb)
        adv = torch.tensor([s.advantage for s in mb], dtype=torch.float32, device=logp.device)
        behaviour = self._behaviour(mb, logp)
        if old is None:
            old = behaviour if self.s.old_logprobs == "sampler" and behaviour is not None else logp.detach()
        per_token = grpo.POLICY_LOSSES[self.s.policy_loss](logp, old, adv, clip_low=self.s.clip_low,
                                                            clip_high=self.s.clip_high)
        if self.s.tis_cap and behaviour is not None:
            w = torch.exp(old - behaviour).clamp(max=self.s.tis_cap) * mask
            per_token = per_token * w
            if once:
                once[1].update({id(s): float(w[i].sum() / mask[i].sum().clamp(min=1)) for i, s in enumerate(mb)})
        if self.ref is not None:
            with torch.no_grad(), self._autocast():
                ref_logp, _ = self._ref_logprobs(mb)
            kl = grpo.KL_ESTIMATORS[self.s.kl_estimator](logp, ref_logp)
            per_token = per_token + self.s.kl_coef * kl
            acc["kl"] += float(aggregate(kl.detach(), mask, *totals))
        loss = aggregate(per_token, mask, *totals)
        self.strategy.backward(loss)
        acc["loss"] += float(loss.detach())
        self._ratio_stats(logp, old, adv, mask, totals[0], acc)
        if once and behaviour is not None:
            acc["sampler_logprob_gap"] += float(aggregate((behaviour - old).abs(), mask, *once[0]))

    def _ref_logprobs(self, mb):
        return completion_logprobs(self.ref, mb, self.pad_id, self.s.device, self.vision)

    def _behaviour(self, mb: list, logp: torch.Tensor):
        """The sampler's log-probs [S, T] (zero-padded), or None when the samples carry none."""
        if mb[0].sampler_logprobs is None:
            if self.s.old_logprobs == "sampler" and mb is not self._placeholder():
                raise ValueError("learner.old_logprobs: sampler needs the sampler's log-probs, "
                                 "and these samples carry none")
            return None
        behaviour = torch.zeros_like(logp, dtype=torch.float32)
        for i, s in enumerate(mb):
            behaviour[i, :len(s.sampler_logprobs)] = torch.tensor(s.sampler_logprobs, device=logp.device)
        return behaviour

    def _ratio_stats(self, logp, old, adv, mask, tokens: float, acc: dict) -> None:
        stats = ratio_stats(logp, old, adv, mask, self.s.clip_low, self.s.clip_high, tokens)
        acc["ratio_max"] = max(acc["ratio_max"], stats.pop("ratio_max"))
        acc["ratio_min"] = min(acc["ratio_min"], stats.pop("ratio_min"))
        for k, v in stats.items():
            acc[k] += v
