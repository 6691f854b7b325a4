"""UI-Genie-RM head on a frozen backbone: prompt layout, feature cache, training, persistence.

Uses the ``tiny_lm`` fixture (word-level tokenizer), so toy inputs are built from conftest's WORDS.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from actors.reward_model import (RMInput, RewardModel, RewardModelSettings, balanced_pos_weight,
                                 format_rm_prompt)
from actors.generation import token_batches
from actors.reward_model.model import resolve_pos_weight, truncate_left

FILLER = ["what", "is", "the", "answer", "to", "one", "two", "three", "cat", "dog", "red", "blue",
          "green", "big", "small", "up", "down", "left", "right", "a", "b", "c", "it", "so", "then"]


@pytest.fixture(scope="module")
def rm(tiny_lm) -> RewardModel:
    return RewardModel(RewardModelSettings(model=tiny_lm, max_tokens=96, max_screen_chars=60,
                                           head_hidden=32, lr=1e-2, seed=0))


def toy(rng: random.Random, label: int) -> RMInput:
    """Varied goal/history/screen; the action is "yes" (label 1) or "no" (label 0) repeated 24 times:
    the tiny random backbone's last-token state is dominated by the goal words, and a single
    action word is too faint in it to separate on unseen goals (a real LM does not need this)."""
    words = lambda k: " ".join(rng.choice(FILLER) for _ in range(k))
    return RMInput(goal=words(rng.randint(2, 5)), history=[words(2) for _ in range(rng.randint(0, 2))],
                   screen=words(rng.randint(1, 4)), action=" ".join(["yes" if label else "no"] * 24))


def toy_set(seed: int, n: int) -> tuple[list[RMInput], list[int]]:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    return [toy(rng, y) for y in labels], labels


def test_prompt_layout_keeps_last_five_and_cuts_screen():
    x = RMInput(goal="open the cat app", history=[f"step {i}" for i in range(1, 8)],
                screen="0123456789abcdef", action="click ok")
    assert format_rm_prompt(x, max_screen_chars=10) == (
        "Goal: open the cat app\n"
        "Previous actions:\n"
        "1. step 3\n2. step 4\n3. step 5\n4. step 6\n5. step 7\n"
        "Current screen:\n"
        "0123456789 ...\n"
        "Candidate action: click ok\n"
        "Question: Is this action correct for the goal? Answer yes or no.")
    short = format_rm_prompt(RMInput(goal="g", screen="s", action="a"), max_screen_chars=10)
    assert "Previous actions:\n(none)\nCurrent screen:\ns\n" in short


def test_balanced_pos_weight_by_hand():
    assert balanced_pos_weight(n_pos=2, n_neg=6) == 3.0        # 6 / 2
    assert balanced_pos_weight(n_pos=4, n_neg=1) == 0.25       # 1 / 4
    assert balanced_pos_weight(n_pos=0, n_neg=5) == 1.0        # one class: nothing to balance
    assert resolve_pos_weight(2.5, 1, 9) == 2.5
    with pytest.raises(ValueError, match="pos_weight"):
        resolve_pos_weight("auto", 1, 1)


def test_truncate_left_and_token_batches():
    assert truncate_left([1, 2, 3, 4, 5], 3, bos_id=None) == [3, 4, 5]
    assert truncate_left([9, 2, 3, 4, 5], 3, bos_id=9) == [9, 4, 5]
    assert truncate_left([1, 2], 3, bos_id=None) == [1, 2]
    # longest first (5, 4, 3, 2); rows × longest ≤ 9: [5] (2×5 > 9), [4, 3] (2×4 = 8), [2] (3×4 > 9)
    assert token_batches([2, 5, 3, 4], budget=9) == [[1], [3, 2], [0]]
    assert token_batches([2, 5, 3, 4], budget=10) == [[1, 3], [2, 0]]


def test_features_are_cached(rm):
    calls = []
    handle = rm.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        rm.clear_cache()
        xs, _ = toy_set(1, 4)
        first = rm.features(xs)
        assert first.shape == (4, rm.feature_size) and len(calls) == 3   # context, goal, action
        again = rm.features(xs[::-1] + xs)                    # all seen: no backbone forward
        assert len(calls) == 3
        assert torch.equal(again[:4], first.flip(0))
    finally:
        handle.remove()


def test_left_padding_does_not_change_features(rm):
    short = RMInput(goal="cat", action="yes")
    longer = [RMInput(goal="what is the answer to one plus two", history=["up", "down left"] * 3,
                      screen="red blue green big small", action="no"),
              RMInput(goal="dog dog", screen="a b c d e", action="so then it")]
    rm.clear_cache()
    alone = rm.features([short])[0]
    rm.clear_cache()
    batched = rm.features(longer + [short])[2]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)


def test_separable_toy_set_is_learned(rm):
    train_x, train_y = toy_set(2, 64)
    test_x, test_y = toy_set(3, 32)
    stats = rm.fit(train_x, train_y, epochs=60)
    assert stats["n"] == 64 and stats["n_pos"] == 32 and stats["pos_weight"] == 1.0
    assert stats["loss_last"] < stats["loss_first"] and not stats["one_class"]
    result = rm.evaluate(test_x, test_y)
    assert result["f1"] == 1.0 and result["accuracy"] == 1.0 and result["n"] == 32
    scores = rm.score(test_x)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_fit_is_seeded_with_mini_batches(rm):
    xs, ys = toy_set(7, 20)
    rm.settings.batch_size = 8                                # 3 mini-batches per epoch
    try:
        first = rm.fit(xs, ys, epochs=3), rm.score(xs)
        again = rm.fit(xs, ys, epochs=3), rm.score(xs)
    finally:
        rm.settings.batch_size = 64
    assert first == again and first[0]["loss_first"] != first[0]["loss_last"]


def test_save_load_gives_identical_scores(rm, tmp_path):
    xs, ys = toy_set(4, 16)
    rm.fit(xs, ys, epochs=5)
    rm.save(tmp_path / "rm")
    rm.save(tmp_path / "rm")                                  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]
    fresh = RewardModel.from_saved(tmp_path / "rm")
    assert fresh.score(xs) == rm.score(xs)
    other = RewardModel(RewardModelSettings(model=rm.settings.model, max_tokens=32))
    with pytest.raises(ValueError, match="max_tokens"):
        other.load(tmp_path / "rm")


def test_errors_and_one_class(rm):
    with pytest.raises(ValueError, match="at least one example"):
        rm.fit([], [])
    with pytest.raises(ValueError, match="2 inputs but 1 labels"):
        rm.fit(toy_set(5, 2)[0], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        rm.fit(toy_set(5, 2)[0], [1, 2])
    with pytest.raises(ValueError, match="at least one example"):
        rm.evaluate([], [])
    xs, _ = toy_set(6, 4)
    stats = rm.fit(xs, [1, 1, 1, 1], epochs=2)
    assert stats["one_class"] and stats["n_pos"] == 4 and stats["pos_weight"] == 1.0
    assert rm.score([]) == []


def test_untrained_head_refuses_to_score(tiny_lm):
    fresh = RewardModel(RewardModelSettings(model=tiny_lm, max_tokens=64))
    with pytest.raises(RuntimeError, match="not trained"):
        fresh.score([RMInput(goal="cat", action="yes")])


def test_an_actor_with_a_fraction_of_a_cpu_computes_features_on_every_core(tiny_lm):
    """Ray starts an actor with num_cpus < 1 with OMP_NUM_THREADS=1; the backbone must not stay
    on one core (the UI-Genie job places the RM with num_cpus 0.25)."""
    import ray
    ours = not ray.is_initialized()
    if ours:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=0.25)(RewardModel).remote(RewardModelSettings(model=tiny_lm, max_tokens=32))
        threads = ray.get(actor.__ray_call__.remote(lambda self: torch.get_num_threads()))
        assert threads == os.cpu_count()
        ray.kill(actor)
    finally:
        if ours:
            ray.shutdown()
