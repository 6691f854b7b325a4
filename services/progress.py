"""Progress for long work: a bar over steps that says which phase a step is in (generate, grade,
train, sync, evaluate, checkpoint) and when the run should end — from the mean step time, since a
step lasts longer than rich's own speed estimate looks back — and one line per step with its numbers."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

SHOWN = [("heldout/pass@1", "pass@1"), ("heldout/maj@8", "maj@8"), ("val/pass@1", "val"),
         ("train/pseudo_reward", "pseudo_r"), ("train/true_reward", "true_r"),
         ("train/majority_agreement", "agree"), ("train/mean_tokens", "tokens"),
         ("train/loss", "loss"), ("time/step_s", "s")]


def format_values(values: dict[str, float]) -> str:
    return "  ".join(f"{label} {values[key]:.3f}" if key != "time/step_s" else f"{values[key]:.1f}s"
                     for key, label in SHOWN if key in values)


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def eta_seconds(step_times: list[float], remaining: int, since_last: float) -> float | None:
    """Remaining steps × the mean step time so far, less the time the current step has run."""
    if not step_times:
        return None
    return max(remaining * (sum(step_times) / len(step_times)) - since_last, 0.0)


class MeanStepETA(ProgressColumn):
    """``ETA h:mm:ss`` from the steps timed so far (``--`` until the first is done)."""

    def render(self, task) -> Text:
        times = task.fields.get("step_times") or []
        eta = eta_seconds(times, int(task.total - task.completed),
                          time.monotonic() - task.fields.get("last_step_end", time.monotonic()))
        return Text("ETA " + ("--" if eta is None else format_duration(eta)), style="progress.remaining")


class StepProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=False)
        self.bar: Progress | None = None
        self.task = None
        self.step_times: list[float] = []
        self.last_step_end = time.monotonic()

    def start(self, total: int, done: int) -> None:
        if self.bar is not None:
            return
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("[cyan]{task.fields[phase]}"), TimeElapsedColumn(), MeanStepETA(),
                            console=self.console, transient=False)
        self.bar.start()
        self.last_step_end = time.monotonic()
        self.task = self.bar.add_task("steps", total=total, completed=done, phase="",
                                      step_times=self.step_times, last_step_end=self.last_step_end)

    def phase(self, name: str) -> None:
        """What the current step is doing now (shown beside the count)."""
        if self.bar is not None:
            self.bar.update(self.task, phase=name)

    def line(self, step: int, values: dict[str, float]) -> None:
        self.console.print(f"step {step:4d}  {format_values(values)}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text)

    def advance(self, step: int, values: dict[str, float]) -> None:
        self.line(step, values)
        self.tick(step, values.get("time/step_s"))

    def tick(self, completed: int, seconds: float | None = None) -> None:
        """``completed`` units done, the last one in ``seconds`` (default: since the previous tick)."""
        now = time.monotonic()
        self.step_times.append(now - self.last_step_end if seconds is None else seconds)
        self.last_step_end = now
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, phase="", last_step_end=now)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, phase="done")
            self.bar.stop()
            self.bar = None
