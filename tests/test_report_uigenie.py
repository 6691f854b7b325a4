"""The UI-Genie report from a hand-made metrics table."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from jobs.uigenie.report import by_generation, uigenie_markdown, write_uigenie_report

T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


def rows(values: dict[tuple[int, str], float]) -> list[dict]:
    return [{"step": g, "name": n, "value": v, "time": T0 + timedelta(seconds=i)}
            for i, ((g, n), v) in enumerate(values.items())]


METRICS = rows({(-1, "base/success_rate"): 0.0, (0, "gen/success_rate"): 0.25,
                (0, "rm/step_f1"): 0.5, (0, "data/agent_examples"): 40,
                (1, "gen/success_rate"): 0.375, (1, "explore/solved_rate"): 0.5,
                (1, "data/agent_examples"): 52, (0, "gen/success_rate_level1"): 0.5,
                (1, "explore/beam_only_solved"): 2})


def test_last_value_wins_and_table_rows_per_generation():
    again = METRICS + rows({(1, "gen/success_rate"): 0.5})
    again[-1]["time"] = T0 + timedelta(hours=1)          # a resumed generation logged later
    series = by_generation(again)
    assert series["gen/success_rate"] == {0: 0.25, 1: 0.5}
    md = uigenie_markdown(series, {})
    assert "base model (before any training): held-out success 0.000" in md
    assert "| held-out success | level 1 | explore solved | beam-only solves | RM step F1 |" in md
    assert "| 0 | 0.250 | 0.500 | — | — | 0.500 | — | 40 |" in md
    assert "| 1 | 0.500 | — | 0.500 | 2 | — | — | 52 |" in md


def test_plot_written(tmp_path):
    md = write_uigenie_report(tmp_path, METRICS)
    assert (tmp_path / "uigenie_generations.png").stat().st_size > 10_000
    assert "![generations](uigenie_generations.png)" in md
