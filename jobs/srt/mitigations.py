"""SRT's collapse mitigations (early stopping, offline labels, curriculum) and a collapse detector.

All pure logic; the driver loop (``jobs/srt/loop.py``) decides when to call them.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement of more than ``min_delta``."""
    patience: int
    min_delta: float = 0.0
    best: float = float("-inf")
    best_step: int = -1
    bad_evals: int = 0

    def update(self, step: int, value: float) -> tuple[bool, bool]:
        """Record an evaluation; return (improved, should_stop)."""
        if value > self.best + self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True, False
        self.bad_evals += 1
        return False, self.bad_evals >= self.patience

    def state(self) -> dict:
        return asdict(self)


def top_answer_share(majorities: list[Optional[str]]) -> float:
    """Share of prompts (with a majority) whose majority is the single most common one.
    On prompts with different true answers this stays low unless answers stop depending on them."""
    answered = [m for m in majorities if m is not None]
    if not answered:
        return 0.0
    return Counter(answered).most_common(1)[0][1] / len(answered)


def prompt_echo_share(majorities: list[Optional[str]], prompts: list[str]) -> float:
    """Share of prompts (with a majority) whose majority answer is copied from the prompt itself
    (e.g. "3 + 7 equals 3"): agreement bought by echoing the question, not by solving it."""
    pairs = [(m, p) for m, p in zip(majorities, prompts) if m is not None]
    if not pairs:
        return 0.0
    echoed = sum(bool(re.search(rf"(?<![\w.]){re.escape(m)}(?![\w]|\.\d)", p)) for m, p in pairs)
    return echoed / len(pairs)


@dataclass
class CollapseDetector:
    """Fires when the pseudo-reward climbs by ``reward_rise`` within ``window`` steps while the
    answers stop depending on the question — one answer is the majority for at least
    ``dominance`` of the prompts, or the majority answer is copied from the prompt for at least
    ``echo`` of them — or when held-out pass@1 falls more than ``heldout_drop`` below its best."""
    window: int
    reward_rise: float
    dominance: float
    heldout_drop: float
    echo: float = 0.75
    rewards: list[float] = field(default_factory=list)
    best_heldout: float = float("-inf")
    fired: bool = False

    def observe_train(self, pseudo_reward: float, majorities: list[Optional[str]],
                      prompts: Optional[list[str]] = None) -> Optional[str]:
        self.rewards = (self.rewards + [pseudo_reward])[-self.window:]
        rise = pseudo_reward - min(self.rewards)
        if rise < self.reward_rise:
            return None
        rose = f"pseudo-reward rose {rise:+.2f} within {len(self.rewards)} steps while "
        share = top_answer_share(majorities)
        if share >= self.dominance:
            top = Counter(m for m in majorities if m is not None).most_common(1)[0][0]
            return rose + f"answer {top!r} is the majority for {share:.0%} of prompts"
        echo = prompt_echo_share(majorities, prompts) if prompts else 0.0
        if echo >= self.echo:
            return rose + f"the majority answer is copied from the question for {echo:.0%} of prompts"
        return None

    def observe_heldout(self, pass1: float) -> Optional[str]:
        self.best_heldout = max(self.best_heldout, pass1)
        if self.best_heldout - pass1 > self.heldout_drop:
            return f"held-out pass@1 fell to {pass1:.3f} from its best {self.best_heldout:.3f}"
        return None

    def state(self) -> dict:
        return asdict(self)


def easiest_fraction(shares: dict[str, float], keep_fraction: float) -> list[str]:
    """Label-free curriculum: ids of the prompts with the highest majority share (ties by id)."""
    ranked = sorted(shares, key=lambda k: (-shares[k], k))
    return ranked[:max(1, round(len(ranked) * keep_fraction))]


def in_batch_keep(shares: list[float], keep_fraction: float) -> list[int]:
    """In-batch curriculum: indices of the groups with the highest majority share in this batch."""
    order = sorted(range(len(shares)), key=lambda i: (-shares[i], i))
    return sorted(order[:max(1, round(len(shares) * keep_fraction))])
