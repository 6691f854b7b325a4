"""services.report: plots, report.md and the demo table from a synthetic run directory."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.srt.report import demo_table, load_run
from services.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# held-out evaluations every 10 steps: (pass@1, maj@8, val/pass@1)
LABEL_FREE_EVALS = {0: (0.25, 0.375, 0.3125), 10: (0.5, 0.5625, 0.4375),
                    20: (0.625, 0.6875, 0.5), 30: (0.4375, 0.5, 0.375)}
BASELINE_EVALS = {0: (0.25, 0.375, 0.3125), 10: (0.5625, 0.625, 0.5),
                  20: (0.6875, 0.75, 0.5625), 30: (0.75, 0.8125, 0.625)}


def make_run(root: Path, dirname: str, name: str, reward_kind: str, evals: dict,
             events: list[dict] = (), train: bool = True) -> Path:
    run = root / dirname
    run.mkdir()
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = []

    def log(step, metric, value):
        rows.append((step, metric, float(value), t0 + timedelta(seconds=step)))

    for step, (p1, maj, val) in evals.items():
        log(step, "heldout/pass@1", p1)
        log(step, "heldout/maj@8", maj)
        log(step, "val/pass@1", val)
    if train:
        for step in range(1, 31):
            log(step, "train/pseudo_reward", min(1.0, 0.4 + step * 0.02))
            log(step, "train/majority_agreement", min(1.0, 0.45 + step * 0.018))
            log(step, "train/true_reward", 0.3 + 0.01 * step - (0.012 * (step - 20) if step > 20 else 0))
            log(step, "train/loss", 0.05 / step)
            log(step, "train/kl", 0.001 * step)
            log(step, "time/step_s", 1.5)
            log(step, "collapse/top_answer_share", min(1.0, 0.1 + 0.025 * step))
    table = pa.table({
        "step": pa.array([r[0] for r in rows], pa.int64()),
        "name": pa.array([r[1] for r in rows], pa.string()),
        "value": pa.array([r[2] for r in rows], pa.float64()),
        "time": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, run / "metrics.parquet")
    (run / "config.yaml").write_text(
        f"job: srt\nname: {name}\nreward:\n  kind: {reward_kind}\ntrain:\n  steps: 30\n")
    with open(run / "events.jsonl", "w") as f:
        f.write(json.dumps({"event": "run_started", "step": 0, "time": "2025-01-01T00:00:00Z"}) + "\n")
        for ev in events:
            f.write(json.dumps(ev) + "\n")
        f.write('{"event": "truncated')   # a line still being written by a live run
    return run


@pytest.fixture
def runs(tmp_path):
    label_free = make_run(tmp_path, "srt-label-free", "srt-demo", "majority_vote", LABEL_FREE_EVALS,
                          events=[
                              {"event": "best_checkpoint", "step": 20, "time": "2025-01-01T00:00:20Z",
                               "metric": "heldout/pass@1", "value": 0.625},
                              {"event": "collapse_detected", "step": 25, "time": "2025-01-01T00:00:25Z",
                               "reason": "pseudo-reward rose while held-out fell"},
                          ])
    baseline = make_run(tmp_path, "srt-labelled", "srt-demo", "ground_truth", BASELINE_EVALS)
    return label_free, baseline


def assert_png(path: Path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000


def test_write_report(runs):
    run, _ = runs
    report = write_report(str(run))
    assert report == run / "report.md"
    assert_png(run / "heldout.png")
    assert_png(run / "training.png")
    md = report.read_text()
    assert md.startswith("# Report: srt-demo")
    assert "Best checkpoint (`checkpoints/best`): step 20, chosen by heldout/pass@1 = 0.625" in md
    assert "collapse_detected" in md and "step 25" in md
    assert "pseudo-reward rose while held-out fell" in md
    assert "best_checkpoint" in md
    assert "run_started" not in md                         # not an event of interest
    assert "| step | pass@1 | maj@8 | val/pass@1 |" in md
    assert "| 30 | 0.438 | 0.500 | 0.375 |" in md
    assert "![held-out accuracy](heldout.png)" in md
    assert "![training metrics](training.png)" in md
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]   # no temp files left over


def test_write_report_compare(runs):
    run, baseline = runs
    report = write_report(run, compare=[str(baseline)])
    assert_png(run / "heldout.png")
    md = report.read_text()
    assert "## Comparison" in md
    assert "ground_truth" in md and "majority_vote" in md
    assert "| 0.750 | 30 | 0.750 |" in md                    # the baseline's best and final pass@1
    assert not (baseline / "report.md").exists()              # compared runs are only read


def test_report_without_heldout_or_training(tmp_path):
    run = make_run(tmp_path, "bare", "bare-run", "majority_vote", {}, train=False)
    pq.write_table(pa.table({"step": pa.array([1], pa.int64()), "name": ["time/step_s"],
                             "value": [1.0]}), run / "metrics.parquet")
    md = write_report(run).read_text()
    assert not (run / "heldout.png").exists() and not (run / "training.png").exists()
    assert "No held-out evaluations" in md and "No plottable metrics" in md


def test_demo_table(runs):
    run, _ = runs
    text = demo_table(str(run))
    lines = text.splitlines()
    base = next(l for l in lines if "base (step 0)" in l)
    assert "0.250" in base and "0.375" in base
    for step, (p1, maj, _) in LABEL_FREE_EVALS.items():
        if step:
            line = next(l for l in lines if f"step {step} " in l and "best" not in l)
            assert f"{p1:.3f}" in line and f"{maj:.3f}" in line
    best = next(l for l in lines if "best" in l)
    assert "step 20" in best and "0.625" in best and "0.688" in best and "+0.375" in best
    assert "maj@8" in text


def test_missing_metrics_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="metrics.parquet"):
        write_report(tmp_path / "empty")
    with pytest.raises(ValueError, match="metrics.parquet"):
        write_report(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="metrics.parquet"):
        demo_table(tmp_path / "empty")


def test_missing_compare_metrics_raises(runs, tmp_path):
    run, _ = runs
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="metrics.parquet"):
        write_report(run, compare=[tmp_path / "other"])


def test_console_and_report_name_the_best_checkpoint_as_the_loop_chose_it(tmp_path):
    """checkpoints/best follows val/pass@1: so do the table and report.md, saying which metric."""
    run = make_run(tmp_path, "by-val", "srt-demo", "majority_vote", BASELINE_EVALS, events=[
        {"event": "best_checkpoint", "step": 10, "metric": "val/pass@1", "value": 0.5}])
    best = next(l for l in demo_table(run).splitlines() if "best" in l)
    assert "step 10, by val/pass@1" in best and "0.562" in best        # held-out pass@1 at step 10
    md = write_report(run).read_text()
    assert "step 10, chosen by val/pass@1 = 0.500**; held-out pass@1 there: 0.562" in md
    assert "highest held-out pass@1, 0.750, was at step 30" in md


def test_without_a_best_event_the_loop_rule_applies(tmp_path):
    run = make_run(tmp_path, "old", "srt-demo", "majority_vote", LABEL_FREE_EVALS)
    assert load_run(run).best() == ("val/pass@1", 20, 0.5)          # val first, as the loop picks


def test_plots_whole_steps_one_line_for_equal_rewards_no_flat_kl(tmp_path):
    run = make_run(tmp_path, "plain", "srt-demo", "majority_vote", LABEL_FREE_EVALS)
    table = pq.read_table(run / "metrics.parquet").to_pylist()
    for r in table:     # hard majority vote: pseudo-reward == agreement; KL off: zeros
        if r["name"] == "train/majority_agreement":
            r["value"] = next(x["value"] for x in table if x["step"] == r["step"] and x["name"] == "train/pseudo_reward")
        if r["name"] == "train/kl":
            r["value"] = 0.0
    pq.write_table(pa.Table.from_pylist(table), run / "metrics.parquet")
    loaded = load_run(run)
    from jobs.srt.report import plot_training
    fig_calls = []
    import jobs.srt.report as report
    original = report.save_png
    report.save_png = lambda fig, path: (fig_calls.append(fig), original(fig, path))
    try:
        assert plot_training(loaded, run / "training.png")
    finally:
        report.save_png = original
    axes = fig_calls[0].axes
    labels = [line.get_label() for ax in axes for line in ax.get_lines()]
    assert "pseudo_reward = majority_agreement" in labels and "majority_agreement" not in labels
    assert "kl" not in labels and len(axes) == 2                    # no twin axis for a flat KL
    ticks = axes[-1].get_xticks()
    assert all(float(t).is_integer() for t in ticks)
