"""Progress for long work: a rich progress bar over steps and one line per step with its numbers."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

SHOWN = [("heldout/pass@1", "pass@1"), ("heldout/maj@8", "maj@8"), ("val/pass@1", "val"),
         ("train/pseudo_reward", "pseudo_r"), ("train/true_reward", "true_r"),
         ("train/majority_agreement", "agree"), ("train/mean_tokens", "tokens"),
         ("train/loss", "loss"), ("time/step_s", "s")]


def format_values(values: dict[str, float]) -> str:
    return "  ".join(f"{label} {values[key]:.3f}" if key != "time/step_s" else f"{values[key]:.1f}s"
                     for key, label in SHOWN if key in values)


class StepProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=False)
        self.bar: Progress | None = None
        self.task = None

    def start(self, total: int, done: int) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                            transient=False)
        self.bar.start()
        self.task = self.bar.add_task("steps", total=total, completed=done)

    def line(self, step: int, values: dict[str, float]) -> None:
        self.console.print(f"step {step:4d}  {format_values(values)}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text)

    def advance(self, step: int, values: dict[str, float]) -> None:
        self.line(step, values)
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
