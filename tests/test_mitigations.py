"""jobs/srt/mitigations.py on hand-computed cases (the expected values are worked out inline)."""
from __future__ import annotations

import pytest

from jobs.srt.mitigations import (prompt_echo_share, CollapseDetector, EarlyStopping, easiest_fraction, in_batch_keep,
                                  top_answer_share)

# --- EarlyStopping -----------------------------------------------------------------------------


def test_early_stopping_improvement_and_patience_countdown():
    es = EarlyStopping(patience=2)
    assert es.update(0, 0.30) == (True, False)         # -inf → 0.30
    assert (es.best, es.best_step, es.bad_evals) == (0.30, 0, 0)
    assert es.update(10, 0.40) == (True, False)        # 0.40 > 0.30
    assert es.update(20, 0.40) == (False, False)       # equal is no improvement: 1 bad
    assert es.bad_evals == 1
    assert es.update(30, 0.45) == (True, False)        # improvement resets the count
    assert (es.best, es.best_step, es.bad_evals) == (0.45, 30, 0)
    assert es.update(40, 0.10) == (False, False)       # 1 bad
    assert es.update(50, 0.44) == (False, True)        # 2 bad = patience → stop
    assert es.best_step == 30 and es.best == 0.45
    assert es.update(60, 0.20) == (False, True)        # stays stopped


def test_early_stopping_min_delta():
    es = EarlyStopping(patience=3, min_delta=0.05)
    assert es.update(0, 0.50) == (True, False)
    assert es.update(1, 0.54) == (False, False)        # 0.54 ≤ 0.50 + 0.05
    assert es.update(2, 0.55) == (False, False)        # 0.55 is not > 0.55 (0.50 + 0.05)
    assert es.best == 0.50 and es.bad_evals == 2
    assert es.update(3, 0.56) == (True, False)         # 0.56 > 0.55
    assert (es.best, es.best_step, es.bad_evals) == (0.56, 3, 0)


def test_early_stopping_patience_one_and_state_roundtrip():
    es = EarlyStopping(patience=1)
    es.update(0, 1.0)
    assert es.update(1, 0.9) == (False, True)
    restored = EarlyStopping(**es.state())
    assert restored == es
    assert es.state() == {"patience": 1, "min_delta": 0.0, "best": 1.0, "best_step": 0, "bad_evals": 1}


# --- top_answer_share --------------------------------------------------------------------------


@pytest.mark.parametrize("majorities, expected", [
    ([], 0.0),
    ([None, None], 0.0),
    (["4"], 1.0),
    (["4", "4", "7", "9"], 0.5),                 # 2 of 4
    (["4", None, "4", None, "7"], 2 / 3),        # Nones are left out: 2 of 3
    (["1", "2", "3", "4", "5"], 0.2),            # all different: 1 of 5
    (["0"] * 9 + ["1"], 0.9),
])
def test_top_answer_share(majorities, expected):
    assert top_answer_share(majorities) == pytest.approx(expected)


# --- CollapseDetector --------------------------------------------------------------------------


def detector(**kw) -> CollapseDetector:
    base = dict(window=3, reward_rise=0.2, dominance=0.6, heldout_drop=0.1)
    base.update(kw)
    return CollapseDetector(**base)


def test_collapse_fires_only_when_rise_and_dominance_hold_together():
    d = detector()
    diverse = ["1", "2", "3", "4", "5"]                 # share 0.2
    dominated = ["42", "42", "42", "7", None]           # share 3/4 = 0.75 ≥ 0.6
    assert d.observe_train(0.30, dominated) is None     # dominance but no rise (0)
    assert d.observe_train(0.60, diverse) is None       # rise 0.30 but no dominance
    msg = d.observe_train(0.55, dominated)              # rise 0.55 − 0.30 = 0.25 ≥ 0.2, share 0.75
    assert msg is not None
    assert "'42'" in msg and "75%" in msg and "+0.25" in msg and "within 3 steps" in msg
    assert d.rewards == [0.30, 0.60, 0.55]


def test_collapse_rise_is_measured_within_the_window():
    d = detector(window=2)
    dominated = ["a", "a", "a", "b"]                    # share 0.75
    assert d.observe_train(0.10, ["x", "y"]) is None
    assert d.observe_train(0.20, ["x", "y"]) is None
    # window 2: the rewards are [0.20, 0.35]; rise 0.15 < 0.2 although 0.35 − 0.10 = 0.25
    assert d.observe_train(0.35, dominated) is None
    assert d.rewards == [0.20, 0.35]
    msg = d.observe_train(0.56, dominated)              # [0.35, 0.56]: rise 0.21
    assert msg is not None and "'a'" in msg and "within 2 steps" in msg


def test_collapse_thresholds_are_inclusive():
    d = detector(reward_rise=0.25, dominance=0.5)
    assert d.observe_train(0.25, ["p", "q"]) is None
    assert d.observe_train(0.50, ["p", "p", "q", "r"]) is not None   # rise exactly 0.25, share 0.5


def test_collapse_on_heldout_drop_beyond_margin():
    d = detector(heldout_drop=0.1)
    assert d.observe_heldout(0.40) is None
    assert d.observe_heldout(0.50) is None              # new best 0.50
    assert d.observe_heldout(0.45) is None              # drop 0.05
    assert d.observe_heldout(0.41) is None              # drop 0.09 ≤ 0.1
    msg = d.observe_heldout(0.35)                       # drop 0.15 > 0.1
    assert msg is not None and "0.350" in msg and "0.500" in msg
    assert d.observe_heldout(0.55) is None and d.best_heldout == 0.55


def test_collapse_state_roundtrip():
    d = detector()
    d.observe_train(0.3, ["a"])
    d.observe_heldout(0.4)
    restored = CollapseDetector(**d.state())
    assert restored == d and restored.rewards == [0.3] and restored.best_heldout == 0.4


# --- curricula ---------------------------------------------------------------------------------


def test_easiest_fraction_orders_by_share_then_id():
    shares = {"q3": 0.5, "q1": 0.9, "q2": 0.5, "q4": 0.1, "q0": 0.5}
    assert easiest_fraction(shares, 0.4) == ["q1", "q0"]             # 5 × 0.4 = 2; tie → id q0
    assert easiest_fraction(shares, 0.6) == ["q1", "q0", "q2"]       # 3
    assert easiest_fraction(shares, 1.0) == ["q1", "q0", "q2", "q3", "q4"]
    assert easiest_fraction(shares, 0.01) == ["q1"]                  # rounds to 0 → at least 1
    assert easiest_fraction(shares, 0.0) == ["q1"]
    assert easiest_fraction(shares, 0.7) == ["q1", "q0", "q2", "q3"]  # 3.5 → 4


def test_in_batch_keep_returns_sorted_indices():
    shares = [0.25, 1.0, 0.5, 1.0, 0.75, 0.5]
    assert in_batch_keep(shares, 0.5) == [1, 3, 4]                   # 6 × 0.5 = 3
    assert in_batch_keep(shares, 1 / 3) == [1, 3]                    # 2
    assert in_batch_keep(shares, 0.6) == [1, 2, 3, 4]                # 3.6 → 4; tie 0.5 → lower index 2
    assert in_batch_keep(shares, 0.01) == [1]                        # at least one kept
    assert in_batch_keep([0.3], 0.2) == [0]
    assert in_batch_keep(shares, 1.0) == [0, 1, 2, 3, 4, 5]
    assert in_batch_keep([0.5, 0.5, 0.5], 0.34) == [0]               # 1.02 → 1; all tied → first


# --- prompt echo: agreement bought by copying a number from the question ---------------------------

def test_prompt_echo_share_counts_copied_answers():
    prompts = ["What is 3 + 7?", "What is 12 + 5?", "What is 4 + 4?", "What is 2 + 9?"]
    # '3' is in prompt 0; '1' is NOT a whole number of prompt 1 ('12'); '4' is in prompt 2; None skipped
    # → 2 echoed of 3 prompts with a majority
    assert prompt_echo_share(["3", "1", "4", None], prompts) == pytest.approx(2 / 3)
    assert prompt_echo_share([None, None], prompts[:2]) == 0.0
    assert prompt_echo_share(["10", "17"], ["What is 3 + 7?", "What is 12 + 5?"]) == 0.0
    assert prompt_echo_share(["2"], ["What is 2.5 + 1?"]) == 0.0   # '2' inside '2.5' is not copied


def test_detector_fires_on_echo_only_with_a_reward_rise():
    d = CollapseDetector(window=3, reward_rise=0.3, dominance=0.9, heldout_drop=0.5, echo=0.75)
    prompts = ["What is 1 + 2?", "What is 3 + 4?", "What is 5 + 6?", "What is 7 + 8?"]
    echoed = ["1", "3", "5", "7"]                 # every majority copies the first operand: echo 1.0
    assert d.observe_train(0.3, echoed, prompts) is None          # no rise yet (0.3 − min 0.3 = 0)
    assert d.observe_train(0.5, echoed, prompts) is None          # rise 0.2 < 0.3
    msg = d.observe_train(0.8, echoed, prompts)                   # rise 0.8 − 0.3 = 0.5 ≥ 0.3
    assert msg is not None and "copied from the question for 100%" in msg
    d2 = CollapseDetector(window=3, reward_rise=0.3, dominance=0.9, heldout_drop=0.5, echo=0.75)
    honest = ["3", "7", "11", "15"]               # correct sums: none copied
    for r in (0.3, 0.5, 0.8):
        assert d2.observe_train(r, honest, prompts) is None
