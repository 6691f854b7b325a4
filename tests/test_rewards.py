"""Unit tests for jobs/srt/rewards.py; expected values are worked out by hand."""
import pytest

from jobs.srt.rewards import (
    EQUIVALENCES, Vote, exact_equal, extract_answer, ground_truth_rewards, last_boxed,
    majority_vote, math_equal, normalize_number,
)


# --- extraction ---------------------------------------------------------------------------------

def test_last_boxed_nested_braces():
    assert last_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{ {a}{b{c}} }") == "{a}{b{c}}"  # last one, stripped
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{12") is None  # never closed


@pytest.mark.parametrize("text, expected", [
    (r"The answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),   # non-number kept as is
    (r"\boxed{12.0}", "12"),                                   # '12.0' → '12'
    (r"\boxed{1,234}", "1234"),                                # commas dropped
    (r"\boxed{-5}", "-5"),
    (r"\boxed{ 42 }", "42"),
    (r"first \boxed{3}, finally \boxed{4}", "4"),              # the last box wins
    (r"3 + 4 = 7 so \boxed{7} and 9 more", "7"),               # a box beats later numbers
    ("3 + 4 = 7", "7"),                                        # no box → last number
    (r"unclosed \boxed{12", "12"),                             # broken box → last number
    ("no digits at all", None),
])
def test_boxed_or_last_number(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, rule="boxed_or_last_number") == expected


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{2.50}", "2.5"),
    ("3 + 4 = 7", None),            # no box → None under the "boxed" rule
    (r"\boxed{12", None),
])
def test_boxed_rule(text, expected):
    assert extract_answer(text, rule="boxed") == expected


@pytest.mark.parametrize("text, expected", [
    (r"\boxed{5} and then 9", "9"),          # ignores the box
    ("It is 1,234,567 apples", "1234567"),
    ("x = -3", "-3"),
    ("temperature fell to -0", "0"),         # '-0' → '0'
    ("12.0", "12"),
    ("about 3.25 m", "3.25"),
    ("The answer is 7, I think.", "7"),      # trailing comma and full stop dropped
    ("007", "7"),
    ("none", None),
])
def test_last_number_rule(text, expected):
    assert extract_answer(text, rule="last_number") == expected


def test_unfinished_reply():
    text = "3 + 4 = 7"
    assert extract_answer(text, finished=False) is None                         # default requires finished
    assert extract_answer(text, finished=False, require_finished=True) is None
    assert extract_answer(text, finished=False, require_finished=False) == "7"
    assert extract_answer(r"\boxed{8} 1", finished=False, require_finished=False) == "8"
    assert extract_answer(text, finished=True, require_finished=True) == "7"


@pytest.mark.parametrize("raw, expected", [
    ("1,234", "1234"), ("12.0", "12"), ("-0", "0"), ("-0.0", "0"), (" 7 ", "7"), ("2.50", "2.5"),
    ("-12.75", "-12.75"), ("1/2", "1/2"), (r"\frac{1}{2}", r"\frac{1}{2}"),
])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_normalize_number_keeps_large_integers_exact():
    assert normalize_number("12345678901234567890") == "12345678901234567890"
    assert normalize_number("12345678901234567891") != normalize_number("12345678901234567890")


# --- majority vote (SRT) ------------------------------------------------------------------------

def test_majority_gets_one_others_zero_none_dropped():
    # classes: '7' = {0, 1}, '8' = {3}; index 2 is None → dropped, reward 0
    # majority '7', share = 2 / 4 samples (None counts in the denominator) = 0.5
    v = majority_vote(["7", "7", None, "8"])
    assert v == Vote([1.0, 1.0, 0.0, 0.0], "7", 0.5, False)


def test_share_counts_all_samples():
    # '5' ×3 out of 5 samples (two None) → share 3/5 = 0.6
    v = majority_vote(["5", None, "5", None, "5"])
    assert v.rewards == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert v.majority == "5"
    assert v.share == pytest.approx(0.6)
    assert not v.skipped


def test_tie_goes_to_first_seen_class():
    # '8' = {0, 3} seen first, '7' = {1, 2}: equal sizes → '8'
    v = majority_vote(["8", "7", "7", "8"])
    assert v.majority == "8"
    assert v.rewards == [1.0, 0.0, 0.0, 1.0]
    assert v.share == pytest.approx(0.5)
    # same multiset, '7' seen first → '7'
    v = majority_vote(["7", "8", "7", "8"])
    assert v.majority == "7"
    assert v.rewards == [1.0, 0.0, 1.0, 0.0]


def test_soft_reward_is_class_count_over_all_samples():
    # n = 5: '7' ×2 → 2/5 = 0.4, '8' ×1 → 0.2, '9' ×1 → 0.2, None → 0
    v = majority_vote(["7", "8", "7", "9", None], soft=True)
    assert v.rewards == pytest.approx([0.4, 0.2, 0.4, 0.2, 0.0])
    assert v.majority == "7"
    assert v.share == pytest.approx(0.4)
    assert not v.skipped
    # n = 6: '8' ×2 and '7' ×2 tie ('8' seen first) → 2/6 each, '9' → 1/6, None → 0
    v = majority_vote(["8", "7", "7", "8", "9", None], soft=True)
    assert v.rewards == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 6, 0.0])
    assert v.majority == "8"
    assert v.share == pytest.approx(1 / 3)


def test_threshold_skip():
    # '7' ×2 of 4 → share 0.5 < 0.6 → skipped, all rewards 0, majority still reported
    v = majority_vote(["7", "7", "8", "9"], threshold=0.6)
    assert v == Vote([0.0, 0.0, 0.0, 0.0], "7", 0.5, True)
    # share 0.5 is not below a threshold of 0.5 → kept
    v = majority_vote(["7", "7", "8", "9"], threshold=0.5)
    assert v == Vote([1.0, 1.0, 0.0, 0.0], "7", 0.5, False)
    # soft rewards are zeroed too when skipped
    assert majority_vote(["7", "7", "8", "9"], soft=True, threshold=0.75).rewards == [0.0] * 4


def test_all_none_is_skipped():
    v = majority_vote([None, None, None])
    assert v == Vote([0.0, 0.0, 0.0], None, 0.0, True)
    assert majority_vote([None, None], threshold=0.0).skipped


def test_unanimous():
    assert majority_vote(["3"] * 4) == Vote([1.0] * 4, "3", 1.0, False)


def test_math_equal():
    assert math_equal(r"\frac{1}{2}", "0.5")
    assert math_equal("1/2", "0.5")
    assert math_equal("7", "7")
    assert not math_equal("1/3", "0.5")
    assert not math_equal("7", "8")


def test_majority_vote_with_math_equivalence():
    # with math_equal, '1/2', '0.5', '\frac{1}{2}' form one class of 3 (first seen '1/2'); '3' alone
    # share = 3/5 = 0.6; None gets 0
    answers = ["1/2", "3", "0.5", r"\frac{1}{2}", None]
    v = majority_vote(answers, equal=math_equal)
    assert v.majority == "1/2"
    assert v.rewards == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert v.share == pytest.approx(0.6)
    # exact equality: four classes of one → tie → first seen '1/2', share 1/5
    v = majority_vote(answers, equal=exact_equal)
    assert v.majority == "1/2"
    assert v.rewards == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert v.share == pytest.approx(0.2)
    # soft with math: class {0,2,3} → 3/5, '3' → 1/5
    v = majority_vote(answers, equal=math_equal, soft=True)
    assert v.rewards == pytest.approx([0.6, 0.2, 0.6, 0.6, 0.0])


def test_equivalences_table():
    assert EQUIVALENCES["exact"] is exact_equal
    assert EQUIVALENCES["math"] is math_equal


# --- ground truth -------------------------------------------------------------------------------

def test_ground_truth_rewards():
    # label '12.0' normalizes to '12'
    assert ground_truth_rewards(["12", None, "13", "12"], "12.0") == [1.0, 0.0, 0.0, 1.0]
    # label '1,234' → '1234'
    assert ground_truth_rewards(["1234", "1,234"], "1,234") == [1.0, 0.0]
    assert ground_truth_rewards([None, None], "3") == [0.0, 0.0]
    assert ground_truth_rewards([], "3") == []


def test_ground_truth_rewards_math():
    # '0.5' and '\frac{1}{2}' equal 1/2 as math; '1/3' doesn't
    answers = ["0.5", r"\frac{1}{2}", "1/3", None]
    assert ground_truth_rewards(answers, "1/2", equal=math_equal) == [1.0, 1.0, 0.0, 0.0]
    assert ground_truth_rewards(answers, "1/2") == [0.0, 0.0, 0.0, 0.0]
