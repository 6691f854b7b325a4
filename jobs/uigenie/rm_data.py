"""UI-Genie-RM training data: rule-based step verification, controlled corruption, labels, hard negatives.

A reward-model example is (goal, current screen, up to 5 previous steps, candidate action) → 1/0.
"Task complete" (the final ``terminate`` step) is an ordinary action whose label is the trajectory's
success, which makes the same model an outcome-level reward.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Sequence

from actors.emulator.actions import Action, click_matches
from actors.reward_model.model import MAX_HISTORY

DONE = Action("terminate", text="success")


@dataclass
class Step:
    """One step: the screen it was taken on, the action, and whether it is known correct (None: unknown)."""
    screen_id: str
    action: Action
    ok: Optional[bool] = None


@dataclass
class Trajectory:
    """A task attempt. ``tag`` names the corruption that produced a synthetic negative (None: real)."""
    task_id: str
    goal: str
    steps: list[Step]
    success: bool
    tag: Optional[str] = None


class RMExample(NamedTuple):
    """One RM example of a trajectory: the step at index ``prefix_len`` (its history is
    ``steps[max(0, prefix_len - 5):prefix_len]``), its action and the 0/1 label."""
    prefix_len: int
    action: Action
    label: int


def normalize_text(s: str) -> str:
    """Case-insensitive, whitespace-collapsed form: '  Hello\\n World ' → 'hello world'."""
    return " ".join(s.lower().split())


def verify_action(pred: Action, ref: Action, target_bounds: Optional[tuple[int, int, int, int]] = None,
                  screen_size: tuple[int, int] = (1080, 2400)) -> tuple[bool, str]:
    """Rule-based check of a predicted action against the reference step → (ok, reason).

    Same kind required; click/long_press: :func:`click_matches` (inside the bounds or within 0.14 ×
    diagonal of the reference point); type/open: normalised text equal; swipe: same direction;
    system_button: same button; terminate: same status; wait: the kind alone.
    """
    if pred.kind != ref.kind:
        return False, f"kind {pred.kind} != {ref.kind}"
    if pred.kind in ("click", "long_press"):
        hit = click_matches((pred.x, pred.y), target_bounds, (ref.x, ref.y), screen_size)
        return hit, "ok" if hit else "coordinate off target"
    if pred.kind in ("type", "open"):
        same = normalize_text(pred.text) == normalize_text(ref.text)
        return same, "ok" if same else f"text {pred.text!r} != {ref.text!r}"
    if pred.kind == "swipe":
        same = pred.direction == ref.direction
        return same, "ok" if same else f"direction {pred.direction} != {ref.direction}"
    if pred.kind in ("system_button", "terminate"):
        same = pred.text == ref.text
        return same, "ok" if same else f"{pred.kind} {pred.text} != {ref.text}"
    return True, "ok"                                    # wait: nothing to compare


def _body(traj: Trajectory) -> list[Step]:
    """Steps before the final terminate (all steps if there is none)."""
    if traj.steps and traj.steps[-1].action.kind == "terminate":
        return traj.steps[:-1]
    return list(traj.steps)


def _labelled(steps: Sequence[Step], success: bool) -> list[Step]:
    """Copies with ``ok`` made explicit (unknown → the source trajectory's success), so the labels
    survive when the copy ends up in a failed trajectory."""
    return [replace(s, ok=success if s.ok is None else s.ok) for s in steps]


def _need_success(traj: Trajectory, name: str) -> list[Step]:
    body = _body(traj)
    if not traj.success or not body:
        raise ValueError(f"{name} needs a successful trajectory with at least one non-terminate step")
    return body


def early_truncation(traj: Trajectory, rng: random.Random) -> Trajectory:
    """Premature "task complete": keep the first k body steps, k uniform in [0, n-1] (at least one
    step is dropped), then terminate(success) on the screen the next step was taken on.

    The kept steps keep their labels; the false completion is ok=False and the result fails.
    """
    body = _need_success(traj, "early_truncation")
    k = rng.randrange(len(body))
    stop = Step(body[k].screen_id, DONE, ok=False)
    return Trajectory(traj.task_id, traj.goal, _labelled(body[:k], True) + [stop], False,
                      tag="early_truncation")


def cross_task_substitution(traj: Trajectory, other: Trajectory, rng: random.Random) -> Trajectory:
    """Right start, wrong task: keep the first k body steps of ``traj`` (k uniform in [0, n-1]), then
    ``other``'s body steps from index j (uniform) on, with their screens, then terminate(success).

    Substituted steps serve the other goal, so they and the completion are ok=False; the result fails.
    """
    body = _need_success(traj, "cross_task_substitution")
    other_body = _body(other)
    if other.task_id == traj.task_id or not other_body:
        raise ValueError("cross_task_substitution needs a different task with at least one step")
    k, j = rng.randrange(len(body)), rng.randrange(len(other_body))
    swapped = [replace(s, ok=False) for s in other_body[j:]]
    # the completion is claimed where the other trajectory went next (its own terminate screen, if any)
    last = other.steps[-1]
    end_screen = last.screen_id if last.action.kind == "terminate" else swapped[-1].screen_id
    steps = _labelled(body[:k], True) + swapped + [Step(end_screen, DONE, ok=False)]
    return Trajectory(traj.task_id, traj.goal, steps, False, tag="cross_task_substitution")


def redundant_continuation(traj: Trajectory, rng: random.Random,
                           extra_actions: Sequence[Action]) -> Trajectory:
    """Not stopping when done: after the full successful body, n extra actions (n uniform in
    [1, len(extra_actions)], drawn without replacement), then terminate(success).

    The first extra action is taken on the completed screen; later screens are not known yet and get
    placeholder ids "<done screen>+i" (i = extra actions taken so far). Extras and completion are
    ok=False: the right action on the completed screen was to terminate.
    """
    body = _need_success(traj, "redundant_continuation")
    extras = [a for a in extra_actions if a.kind != "terminate"]
    if not extras:
        raise ValueError("redundant_continuation needs at least one non-terminate extra action")
    done = traj.steps[-1].screen_id if traj.steps[-1].action.kind == "terminate" else body[-1].screen_id
    chosen = rng.sample(extras, rng.randint(1, len(extras)))
    screens = [done] + [f"{done}+{i}" for i in range(1, len(chosen) + 1)]
    steps = _labelled(body, True) + [Step(s, a, ok=False) for s, a in zip(screens, chosen)]
    steps.append(Step(screens[-1], DONE, ok=False))
    return Trajectory(traj.task_id, traj.goal, steps, False, tag="redundant_continuation")


def history(traj: Trajectory, prefix_len: int) -> list[Step]:
    """The steps an RM example sees before step ``prefix_len``: at most the last 5."""
    return traj.steps[max(0, prefix_len - MAX_HISTORY):prefix_len]


def step_labels(traj: Trajectory) -> list[RMExample]:
    """One RM example per step: label = 1 if ``ok`` is True, 0 if False; unknown ``ok`` takes the
    trajectory's success (all steps of a successful trajectory are correct). A final terminate
    step is always labelled by trajectory success: the outcome-level reward.
    """
    out = []
    for i, step in enumerate(traj.steps):
        final = i == len(traj.steps) - 1 and step.action.kind == "terminate"
        good = traj.success if final or step.ok is None else step.ok
        out.append(RMExample(i, step.action, int(good)))
    return out


def hard_negatives(examples: Sequence[tuple], scores: Sequence[float], threshold: float = 0.5,
                   k: Optional[int] = None) -> list:
    """Negatives (label, the last item, == 0) that the current RM scores above ``threshold``,
    highest score first (ties keep input order), at most ``k``."""
    if len(examples) != len(scores):
        raise ValueError(f"{len(examples)} examples but {len(scores)} scores")
    picked = [(s, i) for i, (ex, s) in enumerate(zip(examples, scores)) if ex[-1] == 0 and s > threshold]
    picked.sort(key=lambda p: (-p[0], p[1]))
    return [examples[i] for _, i in picked[:k]]
