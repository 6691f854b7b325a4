"""Rewards as pure functions: answer extraction, SRT's majority-vote self-reward, ground truth."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, Optional

Extraction = Literal["boxed", "last_number", "boxed_or_last_number"]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}``, braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def normalize_number(s: str) -> str:
    """'1,234' → '1234', '12.0' → '12', '-0' → '0'; anything else stripped unchanged."""
    s = s.strip().replace(",", "")
    if re.fullmatch(r"-?\d+", s):
        return str(int(s))                 # exact for integers of any size
    if re.fullmatch(r"-?\d+\.0*", s):
        return str(int(s.split(".")[0]))
    try:
        value = float(s)
    except ValueError:
        return s
    return repr(value)


def extract_answer(text: str, finished: bool = True, rule: Extraction = "boxed_or_last_number",
                   require_finished: bool = True) -> Optional[str]:
    """The reply's final answer, or None when it has none.

    A reply cut off by the token limit has no answer when ``require_finished`` (its last number is
    usually an operand it was restating, and such fragments agree with each other and win votes).
    """
    if require_finished and not finished:
        return None
    if rule in ("boxed", "boxed_or_last_number"):
        boxed = last_boxed(text)
        if boxed is not None:
            return normalize_number(boxed) if NUMBER.fullmatch(boxed.strip()) else boxed
        if rule == "boxed":
            return None
    numbers = NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


@lru_cache(maxsize=65536)
def math_equal(a: str, b: str) -> bool:
    """Equivalence of two answers as math (math-verify), falling back to string equality."""
    if a == b:
        return True
    from math_verify import parse, verify
    try:
        pa, pb = parse(f"${a}$"), parse(f"${b}$")
        return bool(pa and pb and verify(pa, pb))
    except Exception:  # math-verify raises on malformed LaTeX; such answers only match exactly
        return False


def exact_equal(a: str, b: str) -> bool:
    return a == b


EQUIVALENCES: dict[str, Callable[[str, str], bool]] = {"exact": exact_equal, "math": math_equal}


@dataclass
class Vote:
    rewards: list[float]
    majority: Optional[str]       # the pseudo-label; None when no sample had an answer
    share: float                  # majority count / all samples of the prompt
    skipped: bool                 # no answer at all, or share below the self-consistency threshold


def majority_vote(answers: list[Optional[str]], equal: Callable[[str, str], bool] = exact_equal,
                  soft: bool = False, threshold: float = 0.0) -> Vote:
    """SRT's self-reward for one prompt's samples.

    Unparsable answers (None) are dropped from the vote and get 0. The majority is the largest
    class of equivalent answers (ties: the class seen first). A sample gets 1 if its answer is
    equivalent to the majority, else 0; with ``soft`` it gets the share of samples in its class.
    A prompt whose majority share is below ``threshold`` is skipped (all rewards 0).
    """
    classes: list[list[int]] = []          # indices of samples, one list per answer class
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for members in classes:
            if equal(answers[members[0]], ans):
                members.append(i)
                break
        else:
            classes.append([i])
    n = len(answers)
    if not classes:
        return Vote([0.0] * n, None, 0.0, True)
    top = max(classes, key=len)            # max keeps the first of equal-sized classes
    share = len(top) / n
    if share < threshold:
        return Vote([0.0] * n, answers[top[0]], share, True)
    rewards = [0.0] * n
    for members in classes:
        value = len(members) / n if soft else float(members is top)
        for i in members:
            rewards[i] = value
    return Vote(rewards, answers[top[0]], share, False)


def ground_truth_rewards(answers: list[Optional[str]], truth: str,
                         equal: Callable[[str, str], bool] = exact_equal) -> list[float]:
    """1.0 for an answer equivalent to the label, else 0.0 (the labelled baseline)."""
    label = normalize_number(truth)
    return [float(a is not None and equal(a, label)) for a in answers]


def grade_groups(groups: list[dict], reward: dict) -> list[dict]:
    """One step's grading, the part that reads model-written text: per prompt ``{"texts",
    "finished", "label"}`` → ``{"answers", "rewards", "majority", "share", "skipped"}``.

    ``reward``: ``kind`` (majority_vote | ground_truth | offline_labels), ``extraction``,
    ``require_finished``, ``equivalence``, ``soft``, ``threshold``. Labels only replace the vote's
    rewards (kinds other than majority_vote); the vote is still reported. Stdlib only (math-verify
    is imported lazily), so the same file runs as a program inside the sandbox (``__main__``).
    """
    equal = EQUIVALENCES[reward["equivalence"]]
    out = []
    for g in groups:
        answers = [extract_answer(t, f, reward["extraction"], reward["require_finished"])
                   for t, f in zip(g["texts"], g["finished"])]
        vote = majority_vote(answers, equal, reward["soft"], reward["threshold"])
        rewards, skipped = vote.rewards, vote.skipped
        if reward["kind"] != "majority_vote":
            label = g.get("label")
            rewards = ground_truth_rewards(answers, label, equal) if label else [0.0] * len(answers)
            skipped = label is None
        out.append({"answers": answers, "rewards": rewards, "majority": vote.majority,
                    "share": vote.share, "skipped": skipped})
    return out


if __name__ == "__main__":      # inside the sandbox: {"groups": [...], "reward": {...}} on stdin
    import json
    import sys
    request = json.load(sys.stdin)
    json.dump(grade_groups(request["groups"], request["reward"]), sys.stdout)
