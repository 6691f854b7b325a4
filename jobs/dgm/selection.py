"""DGM parent selection (the DGM paper, arXiv 2505.22954): which archive agents get to be
parents of the next self-improvement attempts.

Pure functions: no Ray, no I/O. Each method is one registered weights function
``(candidates, lam, alpha0) -> [wᵢ]`` (plus its own pick where it is not k draws with replacement);
:func:`select_parents` dispatches by name and :func:`selection_probabilities` gives the per-draw
probabilities (tests, the report) from the same table.

Notation: accᵢ is candidate i's score, nᵢ the number of children it already has in the archive,
λ (``lam``) the sigmoid's steepness, α₀ (``alpha0``) its midpoint.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

WeightsFn = Callable[[list["Candidate"], float, float], list[float]]       # (cands, λ, α₀) → wᵢ
PickFn = Callable[[list["Candidate"], int, random.Random, float, float], list[str]]


@dataclass(frozen=True)
class Selection:
    weights: WeightsFn                 # one draw's weights wᵢ; pᵢ = wᵢ / Σⱼ wⱼ
    pick: Optional[PickFn] = None      # k parents; None: k draws with replacement from pᵢ


PARENT_SELECTION: dict[str, Selection] = {}


@dataclass(frozen=True)
class Candidate:
    """An admitted agent as selection sees it."""
    agent_id: str
    score: float
    children: int


def register_selection(name: str, pick: Optional[PickFn] = None) -> Callable[[WeightsFn], WeightsFn]:
    """Register a method by its per-draw weights (and its own ``pick`` when it is not k draws
    with replacement)."""
    def deco(weights: WeightsFn) -> WeightsFn:
        PARENT_SELECTION[name] = Selection(weights, pick)
        return weights
    return deco


# --- weights -------------------------------------------------------------------------------------

def sigmoid_score(acc: float, lam: float = 10.0, alpha0: float = 0.5) -> float:
    """sᵢ = 1 / (1 + exp(−λ·(accᵢ − α₀))), computed without overflow for any finite argument."""
    z = lam * (acc - alpha0)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@register_selection("score_child_prop")
def score_child_weights(cands: list[Candidate], lam: float, alpha0: float) -> list[float]:
    """The DGM default: wᵢ = sᵢ·hᵢ, sᵢ = 1/(1+exp(−λ(accᵢ−α₀))), hᵢ = 1/(1+nᵢ); with replacement.

    hᵢ spreads attempts over the archive instead of piling them on the current best."""
    return [sigmoid_score(c.score, lam, alpha0) / (1.0 + max(0, c.children)) for c in cands]


@register_selection("score_prop")
def score_weights(cands: list[Candidate], lam: float, alpha0: float) -> list[float]:
    """wᵢ = sᵢ = 1/(1+exp(−λ(accᵢ−α₀))); with replacement."""
    return [sigmoid_score(c.score, lam, alpha0) for c in cands]


@register_selection("random")
def uniform_weights(cands: list[Candidate], lam: float, alpha0: float) -> list[float]:
    """wᵢ = 1; with replacement."""
    return [1.0] * len(cands)


def _best_order(cands: list[Candidate]) -> list[Candidate]:
    """Highest score first; ties by agent_id (so the order never depends on archive order)."""
    return sorted(cands, key=lambda c: (-_finite(c.score), c.agent_id))


def _best_pick(cands: list[Candidate], k: int, rng: random.Random, lam: float, alpha0: float) -> list[str]:
    """The k highest scores (ties by agent_id); when k > N the ranking repeats from the best.

    Deterministic: ``rng`` is unused. (The reference's ``best`` sorts ascending; this one does not.)"""
    order = _best_order(cands)
    return [order[i % len(order)].agent_id for i in range(k)]


@register_selection("best", pick=_best_pick)
def best_weights(cands: list[Candidate], lam: float, alpha0: float) -> list[float]:
    """The first pick of ``best`` is always the top-ranked agent."""
    top = _best_order(cands)[0].agent_id
    return [1.0 if c.agent_id == top else 0.0 for c in cands]


def _finite(x: float) -> float:
    # a NaN/inf score (a broken evaluation) must neither win `best` nor poison the weights
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def _normalise(weights: list[float]) -> list[float]:
    """pᵢ = wᵢ / Σⱼ wⱼ; non-finite or negative weights count as 0; all-zero → uniform."""
    clean = [w if math.isfinite(w) and w > 0 else 0.0 for w in weights]
    total = sum(clean)
    if total <= 0:
        return [1.0 / len(clean)] * len(clean)
    return [w / total for w in clean]


def _draw(cands: list[Candidate], weights: list[float], k: int, rng: random.Random) -> list[str]:
    """k independent draws, with replacement, from pᵢ = normalised wᵢ."""
    p = _normalise(weights)
    return rng.choices([c.agent_id for c in cands], weights=p, k=k)


# --- entry points --------------------------------------------------------------------------------

def _check(candidates: list[Candidate], method: str) -> None:
    if method not in PARENT_SELECTION:
        raise ValueError(f"unknown parent selection {method!r}; known: "
                         f"{', '.join(sorted(PARENT_SELECTION))}")
    if not candidates:
        raise ValueError("parent selection needs at least one admitted agent; the archive has none")


def select_parents(candidates: list[Candidate], k: int, method: str, rng: random.Random,
                   lam: float = 10.0, alpha0: float = 0.5) -> list[str]:
    """k parent agent ids chosen from ``candidates`` by ``method`` (see ``PARENT_SELECTION``)."""
    _check(candidates, method)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    selection, cands = PARENT_SELECTION[method], list(candidates)
    if selection.pick is not None:
        return selection.pick(cands, k, rng, lam, alpha0)
    return _draw(cands, selection.weights(cands, lam, alpha0), k, rng)


def selection_probabilities(candidates: list[Candidate], method: str, lam: float = 10.0,
                            alpha0: float = 0.5) -> dict[str, float]:
    """Probability that one draw picks each agent (for ``best``: the first pick, i.e. 1 for the
    top-ranked agent, 0 for the rest)."""
    _check(candidates, method)
    p = _normalise(PARENT_SELECTION[method].weights(list(candidates), lam, alpha0))
    return {c.agent_id: pi for c, pi in zip(candidates, p)}
