"""GRPO's pieces as small pure functions in registries, so a new estimator or loss is one function.

Shapes: ``rewards``/``advantages`` are [S] (one per sample); token tensors are [S, T] with a 0/1
``mask`` marking completion tokens (the EOS included, padding excluded).
"""
from __future__ import annotations

from typing import Callable

import torch

ADVANTAGE_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., torch.Tensor]] = {}
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def _register(table: dict, name: str):
    def add(fn):
        if name in table:
            raise ValueError(f"{name!r} is registered twice")
        table[name] = fn
        return fn
    return add


def register_adv_est(name: str):
    return _register(ADVANTAGE_ESTIMATORS, name)


def register_policy_loss(name: str):
    return _register(POLICY_LOSSES, name)


def register_kl(name: str):
    return _register(KL_ESTIMATORS, name)


def register_aggregation(name: str):
    return _register(AGGREGATIONS, name)


# --- advantages: each takes the rewards of ONE group (one prompt's samples) -----------------------

@register_adv_est("grpo")
def grpo_advantage(r: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Âᵢ = (rᵢ − mean r) / (std r + eps), unbiased std; a group of one gets 0."""
    if r.numel() < 2:
        return torch.zeros_like(r)
    return (r - r.mean()) / (r.std(unbiased=True) + eps)


@register_adv_est("drgrpo")
def drgrpo_advantage(r: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: Âᵢ = rᵢ − mean r (no division by the std)."""
    return r - r.mean() if r.numel() > 1 else torch.zeros_like(r)


@register_adv_est("rloo")
def rloo_advantage(r: torch.Tensor) -> torch.Tensor:
    """RLOO: Aᵢ = rᵢ − mean_{j≠i} rⱼ = G/(G−1)·(rᵢ − mean r); a group of one gets 0."""
    g = r.numel()
    if g < 2:
        return torch.zeros_like(r)
    return (r - r.mean()) * g / (g - 1)


def group_advantages(rewards: torch.Tensor, group_ids: list[int], estimator: str) -> torch.Tensor:
    """Apply ``estimator`` within each group of samples that share a group id."""
    fn = ADVANTAGE_ESTIMATORS[estimator]
    out = torch.zeros_like(rewards, dtype=torch.float32)
    ids = torch.tensor(group_ids)
    for g in ids.unique():
        sel = ids == g
        out[sel] = fn(rewards[sel].float())
    return out


# --- policy losses: per-token loss [S, T] -----------------------------------------------------------

@register_policy_loss("ppo_clip")
def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                  clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float = 3.0) -> torch.Tensor:
    """ρ = exp(clamp(logπ − logπ_old, ±20)); L = max(−Aρ, −A·clip(ρ, 1−ε_low, 1+ε_high));
    dual clip: L = min(L, −c·A) where A < 0. ``adv`` is [S] or [S, T]."""
    adv = adv if adv.dim() == logp.dim() else adv[:, None]
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high))
    return torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)


@register_policy_loss("vanilla_pg")
def vanilla_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, **_) -> torch.Tensor:
    """REINFORCE with a baseline: L = −A·logπ (no ratio, no clipping)."""
    adv = adv if adv.dim() == logp.dim() else adv[:, None]
    return -adv * logp


# --- KL to the frozen reference, per token ----------------------------------------------------------

@register_kl("low_var_kl")
def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3: exp(ref − logp) − (ref − logp) − 1, clamped to [−10, 10]."""
    d = ref_logp - logp
    return torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)


@register_kl("k1")
def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1: logp − ref (unbiased, high variance)."""
    return logp - ref_logp


# --- aggregation of a per-token quantity to a scalar ------------------------------------------------
# ``total_tokens``/``total_seqs`` are those of the whole batch, so summing the results of its
# micro-batches gives exactly the result on the whole batch (gradient accumulation).

@register_aggregation("token-mean")
def token_mean(x: torch.Tensor, mask: torch.Tensor, total_tokens: float | None = None,
               total_seqs: float | None = None) -> torch.Tensor:
    """Σ x·m / Σ m over the whole batch (DAPO): every token weighs the same."""
    denom = total_tokens if total_tokens is not None else mask.sum().clamp(min=1)
    return (x * mask).sum() / denom


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor, total_tokens: float | None = None,
                        total_seqs: float | None = None) -> torch.Tensor:
    """mean over sequences of (Σₜ x·m / Σₜ m) (original GRPO): every sequence weighs the same."""
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (total_seqs if total_seqs is not None else x.shape[0])
