"""Unit tests for jobs/uigenie/rm_data.py; expected values are worked out by hand."""
import random

import pytest

from actors.emulator.actions import Action
from actors.reward_model.model import f1
from jobs.uigenie.rm_data import (
    DONE, RMExample, Step, Trajectory, cross_task_substitution, early_truncation, hard_negatives,
    history, normalize_text, redundant_continuation, step_labels, verify_action,
)

CLICK = Action("click", x=100, y=200)
TYPE = Action("type", text="hello")
SWIPE = Action("swipe", direction="up")
OPEN = Action("open", text="Maps")
BACK = Action("system_button", text="Back")
WAIT = Action("wait", time=1.0)


def traj_a() -> Trajectory:
    steps = [Step(f"a{i}", a) for i, a in enumerate([CLICK, TYPE, SWIPE, OPEN])] + [Step("a4", DONE)]
    return Trajectory("A", "search maps for hello", steps, True)


def traj_b() -> Trajectory:
    steps = [Step("b0", Action("open", text="Clock")), Step("b1", Action("click", x=50, y=60)),
             Step("b2", DONE)]
    return Trajectory("B", "set an alarm", steps, True)


class FixedRng:
    """Stands in for random.Random with chosen draws, to check each corruption by hand."""

    def __init__(self, *values):
        self.values = list(values)

    def randrange(self, n):
        v = self.values.pop(0)
        assert 0 <= v < n
        return v

    def randint(self, a, b):
        v = self.values.pop(0)
        assert a <= v <= b
        return v

    def sample(self, pool, n):
        return list(pool)[:n]


# --- verification ----------------------------------------------------------------------------------

def test_normalize_text():
    assert normalize_text("  Hello\n\t World ") == "hello world"


@pytest.mark.parametrize("pred, ref, ok", [
    (Action("click", x=100, y=568), CLICK, True),          # 368 px away on 1080×2400: ≤ 368.45
    (Action("click", x=100, y=569), CLICK, False),
    (Action("long_press", x=100, y=200, time=5.0), Action("long_press", x=110, y=210, time=1.0), True),
    (Action("type", text=" HELLO "), TYPE, True),
    (Action("type", text="hell o"), TYPE, False),
    (Action("open", text="maps"), OPEN, True),
    (Action("swipe", direction="down"), SWIPE, False),
    (Action("system_button", text="Home"), BACK, False),
    (Action("terminate", text="success"), DONE, True),
    (Action("terminate", text="failure"), DONE, False),
    (Action("wait", time=9.0), WAIT, True),
    (SWIPE, CLICK, False),
])
def test_verify_action(pred, ref, ok):
    got, reason = verify_action(pred, ref)
    assert got is ok
    assert (reason == "ok") is ok


def test_verify_action_reasons_and_bounds():
    assert verify_action(SWIPE, CLICK) == (False, "kind swipe != click")
    far = Action("click", x=900, y=2000)
    assert verify_action(far, CLICK) == (False, "coordinate off target")
    assert verify_action(far, CLICK, target_bounds=(800, 1900, 1000, 2100)) == (True, "ok")


# --- corruption ------------------------------------------------------------------------------------

def test_early_truncation_by_hand():
    t = early_truncation(traj_a(), FixedRng(2))
    assert (t.task_id, t.success, t.tag) == ("A", False, "early_truncation")
    assert [(s.screen_id, s.action, s.ok) for s in t.steps] == [
        ("a0", CLICK, True), ("a1", TYPE, True), ("a2", DONE, False)]
    first = early_truncation(traj_a(), FixedRng(0))                       # done on the first screen
    assert [(s.screen_id, s.ok) for s in first.steps] == [("a0", False)]


def test_cross_task_substitution_by_hand():
    t = cross_task_substitution(traj_a(), traj_b(), FixedRng(1, 1))
    assert (t.task_id, t.goal, t.success, t.tag) == ("A", "search maps for hello", False,
                                                     "cross_task_substitution")
    assert [(s.screen_id, s.action.kind, s.ok) for s in t.steps] == [
        ("a0", "click", True), ("b1", "click", False), ("b2", "terminate", False)]
    with pytest.raises(ValueError):
        cross_task_substitution(traj_a(), traj_a(), random.Random(0))


def test_redundant_continuation_by_hand():
    t = redundant_continuation(traj_a(), FixedRng(2), [BACK, WAIT, DONE])
    assert (t.success, t.tag) == (False, "redundant_continuation")
    assert [(s.screen_id, s.action, s.ok) for s in t.steps] == [
        ("a0", CLICK, True), ("a1", TYPE, True), ("a2", SWIPE, True), ("a3", OPEN, True),
        ("a4", BACK, False), ("a4+1", WAIT, False), ("a4+2", DONE, False)]


def test_corruption_needs_success():
    failed = Trajectory("A", "g", traj_a().steps, False)
    for make in (lambda r: early_truncation(failed, r),
                 lambda r: cross_task_substitution(failed, traj_b(), r),
                 lambda r: redundant_continuation(failed, r, [BACK])):
        with pytest.raises(ValueError):
            make(random.Random(0))
    with pytest.raises(ValueError):
        redundant_continuation(traj_a(), random.Random(0), [DONE])


def test_corruption_deterministic_with_seed():
    def run(seed):
        rng = random.Random(seed)
        return [early_truncation(traj_a(), rng), cross_task_substitution(traj_a(), traj_b(), rng),
                redundant_continuation(traj_a(), rng, [BACK, WAIT, SWIPE])]
    assert run(7) == run(7)
    lengths = {tuple(len(t.steps) for t in run(seed)) for seed in range(20)}
    assert len(lengths) > 1                                               # the seed matters
    for t in run(3):
        assert not t.success and t.steps[-1].action == DONE and t.steps[-1].ok is False
    assert traj_a().steps[0].ok is None                                  # source not mutated


# --- labels ----------------------------------------------------------------------------------------

def test_step_labels_success_and_failure():
    kinds = [CLICK, TYPE, SWIPE, OPEN, DONE]
    assert step_labels(traj_a()) == [RMExample(i, a, 1) for i, a in enumerate(kinds)]
    steps = [Step("x0", CLICK, ok=True), Step("x1", TYPE), Step("x2", SWIPE, ok=False),
             Step("x3", DONE, ok=True)]                                    # final label = outcome
    assert [e.label for e in step_labels(Trajectory("X", "g", steps, False))] == [1, 0, 0, 0]
    assert [e.label for e in step_labels(Trajectory("X", "g", steps, True))] == [1, 1, 0, 1]


def test_step_labels_of_corruptions():
    t = early_truncation(traj_a(), FixedRng(2))
    assert [e.label for e in step_labels(t)] == [1, 1, 0]


def test_history_window_is_five():
    steps = [Step(f"s{i}", WAIT) for i in range(8)]
    t = Trajectory("H", "g", steps, True)
    assert [s.screen_id for s in history(t, 0)] == []
    assert [s.screen_id for s in history(t, 3)] == ["s0", "s1", "s2"]
    assert [s.screen_id for s in history(t, 7)] == ["s2", "s3", "s4", "s5", "s6"]


def test_hard_negatives():
    ex = [RMExample(0, CLICK, 0), RMExample(1, TYPE, 1), RMExample(2, SWIPE, 0),
          RMExample(3, OPEN, 0), RMExample(4, DONE, 0)]
    scores = [0.7, 0.99, 0.9, 0.5, 0.7]                 # 0.5 is not above the threshold
    assert hard_negatives(ex, scores) == [ex[2], ex[0], ex[4]]
    assert hard_negatives(ex, scores, k=2) == [ex[2], ex[0]]
    assert hard_negatives(ex, scores, threshold=0.8) == [ex[2]]
    with pytest.raises(ValueError):
        hard_negatives(ex, scores[:2])


def test_f1_by_hand():
    # TP=2 (0, 3), FP=1 (1), FN=1 (4): precision 2/3, recall 2/3 → F1 = 2/3
    assert f1([1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(2 / 3)
    # TP=1, FP=0, FN=2: precision 1, recall 1/3 → 2·1/(2 + 0 + 2) = 0.5
    assert f1([1, 0, 0], [1, 1, 1]) == 0.5
    assert f1([1, 1], [1, 1]) == 1.0
    assert f1([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        f1([1], [1, 0])
