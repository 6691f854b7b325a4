"""The progress bar: the phase beside the count, and an ETA from the mean step time."""
from __future__ import annotations

from rich.console import Console

from actors.progress_line import ProgressLine
from services.progress import StepProgress, eta_seconds, format_duration


def test_eta_is_remaining_steps_times_the_mean_step():
    assert eta_seconds([], 10, 0.0) is None                 # nothing timed yet: no guess
    assert eta_seconds([10.0, 20.0], 4, 0.0) == 60.0
    assert eta_seconds([10.0, 20.0], 4, 5.0) == 55.0        # the current step has run 5 s
    assert eta_seconds([10.0], 0, 30.0) == 0.0
    assert format_duration(3725) == "1:02:05"


def test_bar_shows_phase_and_eta():
    console = Console(force_terminal=True, width=120, record=True, color_system=None)
    progress = StepProgress(console)
    progress.start(10, 0)
    progress.phase("evaluate (step 0)")
    progress.bar.refresh()
    assert "0/10 evaluate (step 0)" in console.export_text(clear=False) and "ETA --" in console.export_text(clear=False)
    progress.advance(1, {"time/step_s": 30.0})
    progress.phase("generate")
    progress.bar.refresh()
    text = console.export_text()
    assert "1/10 generate" in text and "ETA 0:04:30" in text
    progress.stop()


def test_progress_line_paces_from_the_steps_after_since(monkeypatch, capsys):
    import sys
    clock = iter([100.0, 130.0])
    monkeypatch.setattr("actors.progress_line.time.monotonic", lambda: next(clock))
    line = ProgressLine("fine-tuning", every=0.0, stream=sys.stdout)
    line("epoch 1/2, step", 10, 40, started=50.0, loss=0.5)              # 50 s for 10 steps
    line("epoch 2/2, step", 30, 40, started=120.0, loss=0.25, since=20)  # 10 s for the 10 since
    assert capsys.readouterr().out.splitlines() == [
        "fine-tuning: epoch 1/2, step 10/40, loss 0.500, ~150 s left",
        "fine-tuning: epoch 2/2, step 30/40, loss 0.250, ~10 s left"]
