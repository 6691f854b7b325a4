"""PPO updates whose clip acts (actors/ppo_update.py): π_old fixed per rollout, ``ppo_epochs`` ×
``mini_batches`` optimizer steps, checked against hand-computed numbers and against the gradient
of the PPO loss computed directly on the moved policy."""
from __future__ import annotations

import math

import pytest
import torch

from actors.grpo import ppo_clip_loss, token_mean
from actors.learner import Learner, LearnerSettings, Sample, completion_logprobs
from actors.ppo_update import ratio_stats, split_groups
from services.config import ConfigError, parse_config
from tests.test_generation_learner import fixed_samples

# one token each: ρ = 1.5, 1.1 with A = +1; ρ = 0.5, 0.9, 2.5, 4.0 with A = −1
RATIOS = [1.5, 1.1, 0.5, 0.9, 2.5, 4.0]
ADV = [1.0, 1.0, -1.0, -1.0, -1.0, -1.0]


def test_the_clipped_tokens_get_no_gradient():
    """ε = 0.2, dual clip c = 3, L = max(−Aρ, −A·clip(ρ, 0.8, 1.2)), then min(L, −cA) where A < 0;
    dL/dlogπ = −Aρ where the unclipped term is the loss, 0 where a clipped one is:
    ρ 1.5 (A +1): −1.2 clipped → 0;   ρ 1.1: −1.1 → −1.1;   ρ 0.5 (A −1): 0.8 clipped → 0;
    ρ 0.9: 0.9 (inside) → 0.9;         ρ 2.5: 2.5 (below c) → 2.5;   ρ 4.0: dual-clipped to 3 → 0."""
    logp = torch.tensor([[math.log(r) for r in RATIOS]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros_like(logp)
    adv = torch.tensor([ADV], dtype=torch.float64)
    loss = ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    loss.sum().backward()
    assert loss.detach()[0].tolist() == pytest.approx([-1.2, -1.1, 0.8, 0.9, 2.5, 3.0])
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.1, 0.0, 0.9, 2.5, 0.0])


def test_ratio_stats_by_hand():
    """clip_fraction counts the tokens where the clipped term is the larger loss (ρ 1.5 and 0.5 of
    six); approx_kl is the mean of (ρ − 1) − log ρ."""
    logp = torch.tensor([[math.log(r) for r in RATIOS]])
    stats = ratio_stats(logp, torch.zeros_like(logp), torch.tensor([ADV]), torch.ones_like(logp),
                        0.2, 0.2, tokens=6.0)
    assert stats["clip_fraction"] == pytest.approx(2 / 6)
    assert stats["approx_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in RATIOS) / 6, rel=1e-6)
    assert stats["ratio_mean"] == pytest.approx(sum(RATIOS) / 6, rel=1e-6)
    assert (stats["ratio_max"], stats["ratio_min"]) == pytest.approx((4.0, 0.5), rel=1e-6)


def test_mini_batches_are_runs_of_whole_groups():
    groups = [[0, 1], [2, 3, 4], [5], [6, 7]]
    assert split_groups(groups, 1) == [list(range(8))]
    assert split_groups(groups, 2) == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert split_groups(groups, 3) == [[0, 1, 2, 3, 4], [5], [6, 7]]
    assert split_groups(groups, 9) == [[0, 1], [2, 3, 4], [5], [6, 7]]    # no more runs than groups


def settings(path, **kw) -> LearnerSettings:
    return LearnerSettings(**{"model": path, "lr": 1e-2, "threads": 1, "grad_clip": 1e9, **kw})


def expected_second_step(tiny_lm, first: list[Sample], second: list[Sample], old: torch.Tensor,
                         clip: float):
    """What a PPO learner's second optimizer step sees: a plain learner takes the first step
    (ratio 1, so the same step), then the PPO loss of ``second`` against π_old = ``old`` is
    differentiated directly. (gradient by name, ratio statistics)."""
    plain = Learner(settings(tiny_lm, clip_low=clip, clip_high=clip))
    plain.train_step(first)
    plain.opt.zero_grad(set_to_none=True)
    logp, mask = completion_logprobs(plain.model, second, plain.pad_id)
    adv = torch.tensor([s.advantage for s in second])
    token_mean(ppo_clip_loss(logp, old, adv, clip_low=clip, clip_high=clip), mask).backward()
    grads = {k: p.grad.clone() for k, p in plain.model.named_parameters() if p.grad is not None}
    return grads, ratio_stats(logp, old, adv, mask, clip, clip, float(mask.sum()))


def old_logprobs(tiny_lm, samples) -> torch.Tensor:
    learner = Learner(settings(tiny_lm))
    with torch.no_grad():
        return completion_logprobs(learner.model, samples, learner.pad_id)[0]


@pytest.mark.parametrize("clip", [0.2, 0.001])
def test_second_epoch_steps_on_the_clipped_loss_of_the_moved_policy(tiny_lm, prompt_ids, clip):
    """ppo_epochs = 2: the first step is the plain one (ρ = 1); the second sees ρ ≠ 1, and its
    gradient is that of the PPO loss on the moved policy against the rollout's π_old."""
    samples = fixed_samples(prompt_ids)
    old = old_logprobs(tiny_lm, samples)
    learner = Learner(settings(tiny_lm, ppo_epochs=2, clip_low=clip, clip_high=clip))
    stats = learner.train_step(samples)
    grads, second = expected_second_step(tiny_lm, samples, samples, old, clip)
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-6, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert stats["updates"] == 2 and learner.version == 1
    assert stats["approx_kl"] == pytest.approx(second["approx_kl"] / 2, rel=1e-4) and stats["approx_kl"] > 0
    assert stats["clip_fraction"] == pytest.approx(second["clip_fraction"] / 2, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(max(1.0, second["ratio_max"]), rel=1e-5)
    assert stats["ratio_min"] == pytest.approx(min(1.0, second["ratio_min"]), rel=1e-5)
    assert stats["ratio_max"] > 1 > stats["ratio_min"]
    if clip == 0.001:       # the tight clip acts on the second step; at 0.2 one step of lr 1e-2 stays inside
        assert stats["clip_fraction"] > 0.1


def test_mini_batches_step_one_after_another_against_one_old_policy(tiny_lm, prompt_ids):
    """mini_batches = 2 (the two prompt groups): the second mini-batch's step is taken after the
    first's, its ratio against the log-probs from before the first, normalised by its own tokens."""
    samples = fixed_samples(prompt_ids)
    first, second = samples[:3], samples[3:]
    old = old_logprobs(tiny_lm, second)
    learner = Learner(settings(tiny_lm, mini_batches=2))
    stats = learner.train_step(samples)
    grads, ratios = expected_second_step(tiny_lm, first, second, old, 0.2)
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-6, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert stats["updates"] == 2
    assert stats["approx_kl"] == pytest.approx(ratios["approx_kl"] / 2, rel=1e-4) and stats["approx_kl"] > 0


def test_sampler_old_logprobs_clip_from_the_first_step(tiny_lm, prompt_ids):
    """old_logprobs: sampler, the sampler gave every token e^−0.5 of the learner's probability: ρ =
    e^0.5 ≈ 1.65 on every token of the first (and only) step; with A > 0 that is above 1 + 0.28 and
    clipped (9 of the 16 tokens), with A < 0 the unclipped term is the larger loss."""
    samples = fixed_samples(prompt_ids)
    old = old_logprobs(tiny_lm, samples)
    shifted = [Sample(s.prompt_ids, s.token_ids, s.advantage, [v - 0.5 for v in old[i, :len(s.token_ids)].tolist()])
               for i, s in enumerate(samples)]
    stats = Learner(settings(tiny_lm, old_logprobs="sampler")).train_step(shifted)
    assert stats["ratio_mean"] == pytest.approx(math.exp(0.5), rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(9 / 16, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(math.exp(0.5) - 1.5, rel=1e-4)
    with pytest.raises(ValueError, match="old_logprobs: sampler needs the sampler's log-probs"):
        Learner(settings(tiny_lm, old_logprobs="sampler")).train_step(samples)


def test_default_is_one_on_policy_step(tiny_lm, prompt_ids):
    stats = Learner(settings(tiny_lm)).train_step(fixed_samples(prompt_ids))
    assert stats["updates"] == 1
    assert stats["ratio_max"] == stats["ratio_min"] == 1.0
    assert stats["approx_kl"] == 0.0 and stats["clip_fraction"] == 0.0


def test_ppo_keys_are_config_keys():
    cfg = parse_config({"job": "srt", "learner": {"ppo_epochs": 2, "mini_batches": 4, "old_logprobs": "sampler"}})
    assert (cfg.learner.ppo_epochs, cfg.learner.mini_batches) == (2, 4)
    assert cfg.learner.settings("m").old_logprobs == "sampler"
    with pytest.raises(ConfigError, match="learner.ppo_epochs"):
        parse_config({"job": "srt", "learner": {"ppo_epochs": 0}})
