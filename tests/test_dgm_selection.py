"""jobs.dgm.selection: DGM parent selection, against hand-computed probabilities."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from jobs.dgm.selection import (PARENT_SELECTION, Candidate, select_parents,
                                selection_probabilities, sigmoid_score)

TWO = [Candidate("a", 0.5, 0), Candidate("b", 0.7, 1)]


def test_registry_names():
    assert set(PARENT_SELECTION) == {"score_child_prop", "score_prop", "random", "best"}


def test_sigmoid_values_and_no_overflow():
    assert sigmoid_score(0.5) == 0.5
    assert sigmoid_score(0.7) == pytest.approx(1 / (1 + math.exp(-2)))   # 0.880797
    assert sigmoid_score(0.7) == pytest.approx(0.880797, abs=1e-6)
    assert sigmoid_score(-1e6) == 0.0 and sigmoid_score(1e6) == 1.0


def test_score_child_prop_hand_computed():
    # s = 0.5 and 0.880797; h = 1 and 1/2 → w = 0.5 and 0.440399
    p = selection_probabilities(TWO, "score_child_prop")
    assert p["a"] == pytest.approx(0.5 / (0.5 + 0.4403985), abs=1e-6)
    assert p["a"] == pytest.approx(0.531689, abs=1e-6)
    assert p["b"] == pytest.approx(0.468311, abs=1e-6)


def test_score_prop_hand_computed():
    p = selection_probabilities(TWO, "score_prop")
    assert p["a"] == pytest.approx(0.5 / (0.5 + 0.880797), abs=1e-6)   # 0.362110
    assert p["a"] == pytest.approx(0.362110, abs=1e-6)


def test_lambda_and_alpha0_are_used():
    # λ = 1, α0 = 0: s = 1/(1+e^-0.5) = 0.622459 and 1/(1+e^-0.7) = 0.668188
    p = selection_probabilities(TWO, "score_prop", lam=1.0, alpha0=0.0)
    assert p["a"] == pytest.approx(0.622459 / (0.622459 + 0.668188), abs=1e-6)


def test_random_and_best_probabilities():
    assert selection_probabilities(TWO, "random") == {"a": 0.5, "b": 0.5}
    assert selection_probabilities(TWO, "best") == {"a": 0.0, "b": 1.0}


def test_children_lower_weight():
    cands = [Candidate("a", 0.6, 0), Candidate("b", 0.6, 3)]
    p = selection_probabilities(cands, "score_child_prop")
    assert p["a"] == pytest.approx(0.8) and p["b"] == pytest.approx(0.2)   # h = 1 and 1/4


def test_sampling_frequencies_match_probabilities():
    cands = [Candidate("a", 0.5, 0), Candidate("b", 0.7, 1), Candidate("c", 0.3, 0)]
    p = selection_probabilities(cands, "score_child_prop")
    n = 20000
    counts = Counter(select_parents(cands, n, "score_child_prop", random.Random(1234)))
    for aid, pi in p.items():
        sd = math.sqrt(pi * (1 - pi) / n)
        assert abs(counts[aid] / n - pi) < 4 * sd, (aid, counts[aid] / n, pi)


def test_seeded_draws_are_reproducible_and_with_replacement():
    a = select_parents(TWO, 50, "score_child_prop", random.Random(7))
    b = select_parents(TWO, 50, "score_child_prop", random.Random(7))
    assert a == b and len(a) == 50 and set(a) == {"a", "b"}
    only = select_parents([Candidate("x", 0.1, 5)], 3, "random", random.Random(0))
    assert only == ["x", "x", "x"]


def test_best_ties_and_cycling():
    cands = [Candidate("c", 0.9, 0), Candidate("b", 0.5, 0), Candidate("a", 0.9, 2),
             Candidate("d", float("nan"), 0)]
    assert select_parents(cands, 2, "best", random.Random(0)) == ["a", "c"]
    assert select_parents(cands, 6, "best", random.Random(0)) == ["a", "c", "b", "d", "a", "c"]


def test_all_zero_weights_fall_back_to_uniform():
    # sigmoid underflows to exactly 0 for a steep enough λ: the guard gives uniform weights
    cands = [Candidate("a", 0.0, 0), Candidate("b", 0.0, 0)]
    p = selection_probabilities(cands, "score_prop", lam=1e6)
    assert p == {"a": 0.5, "b": 0.5}
    assert len(select_parents(cands, 4, "score_child_prop", random.Random(0), lam=1e6)) == 4


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        select_parents([], 1, "score_child_prop", random.Random(0))
    with pytest.raises(ValueError, match="best, random, score_child_prop, score_prop"):
        select_parents(TWO, 1, "nope", random.Random(0))
    with pytest.raises(ValueError, match="unknown"):
        selection_probabilities(TWO, "nope")
    assert select_parents(TWO, 0, "score_prop", random.Random(0)) == []


def test_budget_left_names_the_spent_budget():
    from jobs.dgm.loop import budget_left
    from jobs.dgm.config import GatewayConfig
    cfg = GatewayConfig(max_tokens=1000, max_cost_usd=0.5)
    assert budget_left(cfg, {"prompt_tokens": 600, "completion_tokens": 399, "cost_usd": 0.49}) is None
    assert "token budget spent (1000 of 1000)" in budget_left(cfg, {"prompt_tokens": 600, "completion_tokens": 400})
    assert "cost budget spent" in budget_left(cfg, {"cost_usd": 0.5})
    assert budget_left(GatewayConfig(), {"prompt_tokens": 10**9}) is None
