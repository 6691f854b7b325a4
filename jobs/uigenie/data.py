"""From episodes to training data: agent SFT examples, reward-model examples, Parquet files.

UI-Genie's data rules, in order of use:
- reference trajectories (seed tasks) + the current agent's proposals on their steps, labelled by
  rule-based verification → the first RM data; the references themselves → the first agent data;
- each generation, successful trajectories found by beam search → agent data, and RM positives;
  the three controlled corruptions of them → RM negatives (mostly outcome-level);
- failed trajectories: a step is known correct when the same action on the same screen lies on a
  successful trajectory of the task (→ positive); a "task complete" that the outcome check refuted,
  an action the device rejected and an action that left the screen as it was are known wrong
  (→ negative); other steps stay unlabelled; sibling beams share their first steps, so each
  example is kept once;
- hard negatives: negatives the current RM scores positive are repeated in the next training set.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from jobs.uigenie.env import describe
from jobs.uigenie.policy import target_completion
from jobs.uigenie.rm_data import (
    MAX_HISTORY, Step, Trajectory, cross_task_substitution, early_truncation, history, redundant_continuation,
    step_labels, verify_action)
from actors.emulator.actions import Action
from jobs.uigenie.rollout import Rollout, StepRecord


@dataclass
class RMRow:
    """One reward-model example; ``final`` marks a "task complete" step (outcome-level)."""
    task_id: str
    goal: str
    history: list[str]
    screen: str
    action: str
    label: int
    final: bool
    source: str
    screen_id: str
    png: Optional[bytes] = None


class ScreenBook:
    """Every screen seen (the first step taken on it), by id; corrupted trajectories name unseen
    screens "<id>+i": those show the screen they continue from."""

    def __init__(self):
        self.screens: dict[str, StepRecord] = {}

    def add(self, r: Rollout) -> None:
        for s in r.steps:
            self.screens.setdefault(s.screen_id, s)

    def get(self, screen_id: str) -> StepRecord:
        return self.screens.get(screen_id) or self.screens[screen_id.split("+")[0]]


def to_trajectory(r: Rollout) -> Trajectory:
    """The rm_data view of a rollout: steps with a usable action (malformed replies dropped)."""
    steps = [Step(s.screen_id, s.action, None if s.error is None else False)
             for s in r.steps if s.action is not None]
    return Trajectory(r.task.id, r.task.goal, steps, r.success)


def step_texts(r: Rollout) -> dict[tuple[str, str], str]:
    """(screen_id, tool call) → the history text of that step (element names need the screen)."""
    return {(s.screen_id, s.action.to_tool_call()): s.text for s in r.steps if s.action is not None}


def rm_rows(traj: Trajectory, book: ScreenBook, texts: dict, source: str,
            only: Optional[Iterable[int]] = None) -> list[RMRow]:
    """RM examples of a (possibly corrupted) trajectory; ``only`` restricts to some step indices."""
    keep = set(only) if only is not None else None
    rows = []
    for ex in step_labels(traj):
        if keep is not None and ex.prefix_len not in keep:
            continue
        step = traj.steps[ex.prefix_len]
        past = [_text(s, texts) for s in history(traj, ex.prefix_len)]
        screen = book.get(step.screen_id)
        final = ex.prefix_len == len(traj.steps) - 1 and step.action.kind == "terminate"
        rows.append(RMRow(traj.task_id, traj.goal, past, screen.screen, _text(step, texts), ex.label,
                          final, source, step.screen_id, screen.png))
    return rows


def _text(step: Step, texts: dict) -> str:
    return texts.get((step.screen_id.split("+")[0], step.action.to_tool_call())) or describe(step.action)


def success_rows(successes: list[Rollout], book: ScreenBook, texts: dict, rng: random.Random,
                 corruptions: int, extra_actions: list[Action], source: str) -> list[RMRow]:
    """Positives from successful trajectories, negatives from ``corruptions`` corrupted copies of each."""
    trajs = [to_trajectory(r) for r in successes]
    rows = [row for t in trajs for row in rm_rows(t, book, texts, source)]
    for t in trajs:
        if len([s for s in t.steps if s.action.kind != "terminate"]) == 0:
            continue
        others = [o for o in trajs if o.task_id != t.task_id]
        for i in range(corruptions):
            kind = i % 3
            if kind == 0:
                bad = early_truncation(t, rng)
            elif kind == 1 and others:
                bad = cross_task_substitution(t, rng.choice(others), rng)
            else:
                bad = redundant_continuation(t, rng, extra_actions)
            # the kept prefix repeats positives already counted: only the corrupted part is new
            start = next((j for j, s in enumerate(bad.steps) if s.ok is False), len(bad.steps))
            rows += rm_rows(bad, book, texts, f"{source}:{bad.tag}", only=range(start, len(bad.steps)))
    return rows


def failure_rows(failed: list[Rollout], successes: list[Rollout], book: ScreenBook, texts: dict,
                 source: str) -> list[RMRow]:
    """Known-correct and known-wrong steps of failed trajectories (see the module docstring)."""
    good = {(r.task.id, s.screen_id, s.action.to_tool_call())
            for r in successes for s in r.steps if s.action is not None and s.error is None}
    rows, seen = [], set()
    for r in failed:
        if r.crashed:
            continue
        traj = to_trajectory(r)
        picked = []
        for i, step in enumerate(traj.steps):
            key = (r.task.id, step.screen_id, step.action.to_tool_call())
            if key in good:
                step.ok = True
                picked.append(i)
            elif step.ok is False or (step.action.kind == "terminate" and step.action.text == "success") \
                    or _no_effect(traj.steps, i):
                step.ok = False
                picked.append(i)
        for row in rm_rows(traj, book, texts, source, only=picked):
            key = (row.task_id, row.screen_id, row.action, tuple(row.history))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _no_effect(steps: list[Step], i: int) -> bool:
    """The action left the screen exactly as it was (the next step saw the same screen): a click
    on a field that already has focus, the open app opened again — the loop a weak agent falls
    into, and that the RM, never shown it, scored 1.00. Waiting may rightly change nothing; the
    last step has no next screen to judge by."""
    return (i + 1 < len(steps) and steps[i].action.kind not in ("wait", "terminate")
            and steps[i + 1].screen_id == steps[i].screen_id)


def verified_rows(reference: Rollout, proposals: list[list], bounds: list, size: tuple[int, int],
                  source: str) -> list[RMRow]:
    """Rule-based labels for the agent's proposals on each step of a reference trajectory (the
    reference action itself is a positive); proposals[i] are parsed Actions for step i."""
    rows = []
    for i, step in enumerate(reference.steps):
        past = [s.text for s in reference.steps[max(0, i - MAX_HISTORY):i]]
        seen = {step.action.to_tool_call()}
        final = step.action.kind == "terminate"
        rows.append(RMRow(reference.task.id, reference.task.goal, past, step.screen, step.text, 1,
                          final, f"{source}:reference", step.screen_id, step.png))
        for pred in proposals[i]:
            if pred is None or pred.to_tool_call() in seen:
                continue
            seen.add(pred.to_tool_call())
            ok, _ = verify_action(pred, step.action, bounds[i], size)
            rows.append(RMRow(reference.task.id, reference.task.goal, past, step.screen,
                              describe(pred), int(ok), pred.kind == "terminate", f"{source}:verified",
                              step.screen_id, step.png))
    return rows


def agent_rows(r: Rollout, source: str, generation: int) -> list[dict]:
    """SFT examples of a successful trajectory: (prompt, completion after the reply prefix)."""
    return [{"task_id": r.task.id, "goal": r.task.goal, "prompt": s.prompt,
             "completion": target_completion(s.action), "source": source, "generation": generation}
            for s in r.steps if s.action is not None and s.error is None]


def rollout_record(r: Rollout, generation: int, source: str) -> dict:
    """One Parquet row per episode; every step keeps its screenshot as PNG bytes."""
    return {"task_id": r.task.id, "goal": r.task.goal, "level": int(getattr(r.task, "level", 0)),
            "generation": generation, "source": source, "success": r.success, "done": r.done,
            "crashed": r.crashed, "n_steps": len(r.steps),
            "steps": [{"screen_id": s.screen_id, "app": s.app, "screen": s.screen, "png": s.png,
                       "reply": s.reply, "action": s.action.to_tool_call() if s.action else None,
                       "error": s.error, "reward": s.reward, "text": s.text} for s in r.steps]}


def write_parquet(path: Path, rows: list[dict]) -> None:
    """Atomic: a crash leaves the previous file (or none), never half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from services.run_store import atomic_write
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    atomic_write(path, lambda p: pq.write_table(table, p))


def rm_records(rows: list[RMRow], generation: int) -> list[dict]:
    return [{**asdict(r), "generation": generation} for r in rows]
