"""Unit tests for actors/grpo.py; every expected value is worked out by hand in the comments."""
import math

import pytest
import torch

from actors import grpo
from actors.grpo import (
    ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, drgrpo_advantage,
    group_advantages, grpo_advantage, k1_kl, k3_kl, ppo_clip_loss, register_adv_est,
    register_aggregation, register_kl, register_policy_loss, rloo_advantage, seq_mean_token_mean,
    token_mean, vanilla_pg_loss,
)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# --- advantages ---------------------------------------------------------------------------------

def test_grpo_two_and_two():
    # mean 0.5, deviations ±0.5; unbiased var = 4·0.25/3 = 1/3, std = 0.577350
    # A = ±0.5 / (0.577350 + 1e-6) = ±0.866024
    s = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(grpo_advantage(t([1, 0, 0, 1])), [s, -s, -s, s])
    assert abs(s - 0.866024) < 1e-5


def test_grpo_three_and_one():
    # mean 0.75; deviations .25,.25,.25,-.75; Σd² = 3·0.0625 + 0.5625 = 0.75; var = 0.75/3 = 0.25; std 0.5
    # A = d / 0.500001 → 0.5, 0.5, 0.5, -1.5 (up to the eps)
    d = 0.5 + 1e-6
    close(grpo_advantage(t([1, 1, 1, 0])), [0.25 / d, 0.25 / d, 0.25 / d, -0.75 / d])
    close(grpo_advantage(t([1, 1, 1, 0])), [0.5, 0.5, 0.5, -1.5], atol=1e-5)


def test_grpo_uses_eps():
    # eps = 1: [1,0,0,1] → 0.5 / (0.577350 + 1) = 0.316987
    close(grpo_advantage(t([1, 0, 0, 1]), eps=1.0), [0.316987, -0.316987, -0.316987, 0.316987])


def test_grpo_group_of_one_is_zero():
    close(grpo_advantage(t([1.0])), [0.0])
    close(grpo_advantage(t([0.0])), [0.0])


def test_grpo_all_equal_group_is_zero():
    # r − mean = 0 and std = 0, so 0 / (0 + eps) = 0 (no NaN)
    for value in (0.0, 1.0, 0.3):
        out = grpo_advantage(t([value] * 5))
        assert not torch.isnan(out).any()
        close(out, [0.0] * 5)


def test_drgrpo():
    # mean 0.5 → r − 0.5, no std division
    close(drgrpo_advantage(t([1, 0, 0, 1])), [0.5, -0.5, -0.5, 0.5])
    # mean 0.75 → .25,.25,.25,-.75
    close(drgrpo_advantage(t([1, 1, 1, 0])), [0.25, 0.25, 0.25, -0.75])
    close(drgrpo_advantage(t([1.0])), [0.0])
    close(drgrpo_advantage(t([1, 1, 1])), [0.0, 0.0, 0.0])


def test_rloo():
    # [1,0,0]: A₀ = 1 − mean(0,0) = 1; A₁ = 0 − mean(1,0) = −0.5; A₂ = −0.5
    close(rloo_advantage(t([1, 0, 0])), [1.0, -0.5, -0.5])
    # [1,1,1,0]: A = 1 − 2/3 = 1/3 (×3), 0 − 1 = −1
    close(rloo_advantage(t([1, 1, 1, 0])), [1 / 3, 1 / 3, 1 / 3, -1.0])
    # [2, 0]: A₀ = 2 − 0 = 2, A₁ = 0 − 2 = −2
    close(rloo_advantage(t([2, 0])), [2.0, -2.0])
    close(rloo_advantage(t([1.0])), [0.0])


def test_group_advantages_interleaved_rloo():
    # ids 0,1,0,1,0,1: group 0 = positions 0,2,4 with rewards [1,1,0]; group 1 = 1,3,5 with [0,1,0]
    # rloo group 0: 1 − (1+0)/2 = 0.5, 0.5, 0 − 1 = −1
    # rloo group 1: 0 − 0.5 = −0.5, 1 − 0 = 1, −0.5
    out = group_advantages(t([1, 0, 1, 1, 0, 0]), [0, 1, 0, 1, 0, 1], "rloo")
    close(out, [0.5, -0.5, 0.5, 1.0, -1.0, -0.5])
    assert out.dtype == torch.float32


def test_group_advantages_interleaved_grpo_with_singleton_and_int_rewards():
    # ids 7,3,7,3,7,9: group 7 = positions 0,2,4 rewards [1,1,0]; group 3 = 1,3 rewards [0,1]; group 9 alone
    # group 7: mean 2/3, d = 1/3,1/3,−2/3, Σd² = 6/9, var = 1/3, std 0.577350 → 0.577350, 0.577350, −1.154701
    # group 3: mean 0.5, d = ∓0.5, var = 0.5/1 = 0.5, std 0.707107 → −0.707106, 0.707106
    # group 9: a group of one → 0
    rewards = torch.tensor([1, 0, 1, 1, 0, 1])  # integer rewards are cast to float
    out = group_advantages(rewards, [7, 3, 7, 3, 7, 9], "grpo")
    a = (1 / 3) / (math.sqrt(1 / 3) + 1e-6)
    b = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(out, [a, -b, a, b, -2 * a, 0.0])


def test_group_advantages_unknown_estimator():
    with pytest.raises(KeyError):
        group_advantages(t([1, 0]), [0, 0], "no-such-estimator")


# --- policy losses ------------------------------------------------------------------------------

def ppo(ratio, adv, **kw):
    """ppo_clip_loss on one token whose π/π_old = ratio."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss = ppo_clip_loss(logp, old, torch.tensor([adv], dtype=torch.float64), **kw)
    loss.sum().backward()
    return loss.item(), logp.grad.item()


def test_ppo_positive_adv_ratio_above_high_is_clipped():
    # A = 1, ρ = 1.5, ε_high = 0.28: max(−1.5, −1·1.28) = −1.28; clipped → no gradient
    loss, grad = ppo(1.5, 1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-1.28)
    assert grad == 0.0


def test_ppo_inside_range():
    # A = 2, ρ = 1.1 inside [0.8, 1.28]: L = −2·1.1 = −2.2; dL/dlogπ = −A·ρ = −2.2
    loss, grad = ppo(1.1, 2.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-2.2)
    assert grad == pytest.approx(-2.2)


def test_ppo_negative_adv_ratio_below_low_is_clipped():
    # A = −1, ρ = 0.5, ε_low = 0.2: max(1·0.5, 1·0.8) = 0.8; dual: min(0.8, 3) = 0.8; clipped → grad 0
    loss, grad = ppo(0.5, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0


def test_ppo_dual_clip():
    # A = −1, ρ = 5: max(5, 1.28) = 5; dual clip min(5, −3·(−1) = 3) = 3; constant → grad 0
    loss, grad = ppo(5.0, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(3.0)
    assert grad == 0.0
    # A = −2, ρ = 10: max(20, 2.56) = 20 → min(20, 6) = 6 = −3A
    assert ppo(10.0, -2.0)[0] == pytest.approx(6.0)
    # A = −1, ρ = 2 (< c = 3): max(2, 1.2) = 2, min(2, 3) = 2 — the dual clip does not bind
    assert ppo(2.0, -1.0)[0] == pytest.approx(2.0)
    # dual_clip = 1.5: A = −1, ρ = 2 → min(2, 1.5) = 1.5
    assert ppo(2.0, -1.0, dual_clip=1.5)[0] == pytest.approx(1.5)


def test_ppo_positive_adv_is_never_dual_clipped():
    # A = 1, ρ = 10: max(−10, −1.2) = −1.2; dual clip only applies where A < 0
    assert ppo(10.0, 1.0)[0] == pytest.approx(-1.2)


def test_ppo_asymmetric_clip():
    # ρ = 1.25, A = 1: symmetric 0.2 clips to 1.2 → max(−1.25, −1.2) = −1.2
    assert ppo(1.25, 1.0, clip_low=0.2, clip_high=0.2)[0] == pytest.approx(-1.2)
    #                 clip_high 0.28 leaves 1.25 unclipped → −1.25
    assert ppo(1.25, 1.0, clip_low=0.2, clip_high=0.28)[0] == pytest.approx(-1.25)
    # ρ = 0.75, A = −1: low side still 0.8 → max(0.75, 0.8) = 0.8 (clip_high doesn't matter)
    assert ppo(0.75, -1.0, clip_low=0.2, clip_high=0.28)[0] == pytest.approx(0.8)
    # ρ = 0.75, A = 1: pessimistic max(−0.75, −0.8) = −0.75 (the clip doesn't bind here)
    assert ppo(0.75, 1.0, clip_low=0.2, clip_high=0.28)[0] == pytest.approx(-0.75)
    # ρ = 1.3, A = −1: max(1.3, 1.28) = 1.3
    assert ppo(1.3, -1.0, clip_low=0.2, clip_high=0.28)[0] == pytest.approx(1.3)


def test_ppo_broadcasts_per_sequence_advantage_and_accepts_per_token():
    # two sequences × two tokens; ratios [[1, 1.5], [0.5, 1]]; A = [1, −1]
    # row 0: ρ=1 → −1; ρ=1.5 → max(−1.5, −1.2) = −1.2
    # row 1: ρ=0.5 → max(0.5, 0.8) = 0.8; ρ=1 → 1
    logp = torch.log(t([[1.0, 1.5], [0.5, 1.0]]))
    old = torch.zeros(2, 2)
    expected = [[-1.0, -1.2], [0.8, 1.0]]
    close(ppo_clip_loss(logp, old, t([1.0, -1.0])), expected)
    close(ppo_clip_loss(logp, old, t([[1.0, 1.0], [-1.0, -1.0]])), expected)


def test_ppo_huge_log_ratio_is_clamped():
    # Δ = 1000 is clamped to 20, so ρ = e^20 (finite): A = 0 gives 0·ρ = 0, not 0·inf = NaN
    logp, old = t([[1000.0]]), t([[0.0]])
    close(ppo_clip_loss(logp, old, t([0.0])), [[0.0]])
    # A = −1 → dual clip → 3
    close(ppo_clip_loss(logp, old, t([-1.0])), [[3.0]])
    # A = 1 → max(−e^20, −1.2) = −1.2
    close(ppo_clip_loss(logp, old, t([1.0])), [[-1.2]])


def test_vanilla_pg():
    # L = −A·logπ: row 0 A=2: −2·(−0.5) = 1, −2·(−1) = 2; row 1 A=−1: −(−1)·(−2) = −2, −0.1
    logp = t([[-0.5, -1.0], [-2.0, -0.1]])
    out = vanilla_pg_loss(logp, torch.zeros_like(logp), t([2.0, -1.0]), clip_low=0.2, clip_high=0.28)
    close(out, [[1.0, 2.0], [-2.0, -0.1]])


# --- KL -----------------------------------------------------------------------------------------

def test_k3_hand_values():
    # logp = −1, ref = −2: d = ref − logp = −1 → e^−1 − (−1) − 1 = e^−1 = 0.367879
    close(k3_kl(t([-1.0]), t([-2.0])), [0.367879])
    # logp = −2, ref = −1: d = 1 → e − 1 − 1 = 0.718282
    close(k3_kl(t([-2.0]), t([-1.0])), [0.718282])
    # equal → e^0 − 0 − 1 = 0
    close(k3_kl(t([-3.0]), t([-3.0])), [0.0])


def test_k3_clamped_at_10():
    # d = 30: e^30 − 31 ≫ 10 → 10; d = −30: e^−30 + 30 − 1 ≈ 29 → 10
    close(k3_kl(t([-30.0, 0.0]), t([0.0, -30.0])), [10.0, 10.0])
    # d = 200: e^200 = inf in float32 → still clamped to 10 (no inf/NaN)
    close(k3_kl(t([-200.0]), t([0.0])), [10.0])
    # just below the clamp: d = 2.5 → e^2.5 − 3.5 = 12.182494 − 3.5 = 8.682494
    close(k3_kl(t([0.0]), t([2.5])), [8.682494])


def test_k1():
    # logp − ref: −1 − (−2) = 1; −2 − (−1) = −1
    close(k1_kl(t([-1.0, -2.0]), t([-2.0, -1.0])), [1.0, -1.0])


# --- aggregation --------------------------------------------------------------------------------

X = t([[1, 2, 3], [4, 5, 6]])
M = t([[1, 1, 0], [1, 0, 0]])


def test_token_mean():
    # (1 + 2 + 4) / 3 tokens = 7/3
    close(token_mean(X, M), 7 / 3)


def test_seq_mean_token_mean():
    # row 0: (1+2)/2 = 1.5; row 1: 4/1 = 4; mean = 2.75
    close(seq_mean_token_mean(X, M), 2.75)


def test_aggregations_on_fully_masked_rows():
    # token-mean with no tokens: 0 / clamp(0, 1) = 0
    close(token_mean(X, torch.zeros_like(M)), 0.0)
    # row 1 fully masked: row 0 = 1.5, row 1 = 0 / 1 = 0 → (1.5 + 0) / 2 = 0.75
    close(seq_mean_token_mean(X, t([[1, 1, 0], [0, 0, 0]])), 0.75)


def test_micro_batches_sum_to_the_whole_batch():
    # token-mean, total_tokens = 3: row 0 → 3/3 = 1, row 1 → 4/3; 1 + 4/3 = 7/3
    parts = [token_mean(X[i:i + 1], M[i:i + 1], total_tokens=3, total_seqs=2) for i in range(2)]
    close(parts[0], 1.0)
    close(parts[1], 4 / 3)
    close(parts[0] + parts[1], 7 / 3)
    # seq-mean-token-mean, total_seqs = 2: row 0 → 1.5/2 = 0.75, row 1 → 4/2 = 2; sum 2.75
    parts = [seq_mean_token_mean(X[i:i + 1], M[i:i + 1], total_tokens=3, total_seqs=2) for i in range(2)]
    close(parts[0], 0.75)
    close(parts[1], 2.0)
    close(parts[0] + parts[1], 2.75)


def test_micro_batches_of_uneven_size():
    # batch of 3 rows, split [2] + [1]
    x = t([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    m = t([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    # token-mean whole: (1+2+4+7+8+9)/6 = 31/6; split: (1+2+4)/6 + 24/6 = 7/6 + 4
    close(token_mean(x, m), 31 / 6)
    close(token_mean(x[:2], m[:2], total_tokens=6) + token_mean(x[2:], m[2:], total_tokens=6), 31 / 6)
    # seq-mean whole: (1.5 + 4 + 8)/3 = 4.5; split: (1.5 + 4)/3 + 8/3
    close(seq_mean_token_mean(x, m), 4.5)
    close(seq_mean_token_mean(x[:2], m[:2], total_seqs=3) + seq_mean_token_mean(x[2:], m[2:], total_seqs=3), 4.5)


# --- registries ---------------------------------------------------------------------------------

def test_builtin_names_are_registered():
    assert {"grpo", "drgrpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    assert ADVANTAGE_ESTIMATORS["grpo"] is grpo_advantage
    assert {"ppo_clip", "vanilla_pg"} <= set(POLICY_LOSSES)
    assert {"low_var_kl", "k1"} <= set(KL_ESTIMATORS)
    assert KL_ESTIMATORS["low_var_kl"] is k3_kl
    assert {"token-mean", "seq-mean-token-mean"} <= set(AGGREGATIONS)


@pytest.mark.parametrize("register, table, name", [
    (register_adv_est, ADVANTAGE_ESTIMATORS, "grpo"),
    (register_policy_loss, POLICY_LOSSES, "ppo_clip"),
    (register_kl, KL_ESTIMATORS, "k1"),
    (register_aggregation, AGGREGATIONS, "token-mean"),
])
def test_registering_a_name_twice_raises(register, table, name):
    before = table[name]
    with pytest.raises(ValueError, match="registered twice"):
        register(name)(lambda *a, **k: None)
    assert table[name] is before  # the original stays


def test_registering_a_new_name_twice_raises():
    name = "_test_twice_estimator"
    try:
        register_adv_est(name)(lambda r: r)
        with pytest.raises(ValueError, match=name):
            register_adv_est(name)(lambda r: r)
    finally:
        ADVANTAGE_ESTIMATORS.pop(name, None)


def test_new_estimator_is_usable_via_group_advantages():
    name = "_test_minus_max"

    @register_adv_est(name)
    def minus_max(r):
        return r - r.max()

    try:
        assert grpo.ADVANTAGE_ESTIMATORS[name] is minus_max
        # group 0 = positions 0,2 rewards [3,1] → 0, −2; group 1 = positions 1,3 rewards [0,5] → −5, 0
        out = group_advantages(t([3, 0, 1, 5]), [0, 1, 0, 1], name)
        close(out, [0.0, -5.0, -2.0, 0.0])
    finally:
        del ADVANTAGE_ESTIMATORS[name]
    assert name not in ADVANTAGE_ESTIMATORS
