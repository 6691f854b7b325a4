"""MM-UPT end to end through real Ray actors on the embedded tiny LLaVA (random weights, built from a
config): image prompts to the sampler, synthesis and filter, votes, GRPO steps, evaluation,
checkpoints, resume, report."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.mmupt.loop import STATUSES, SYNTHETIC
from tests.test_srt_end_to_end import evoray, metric_steps

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "mmupt-smoke.yaml"
pytestmark = pytest.mark.slow


def test_mmupt_smoke_runs_end_to_end_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = evoray("run", str(SMOKE), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synthesis:" in proc.stdout
    candidates = pq.read_table(run_dir / SYNTHETIC).to_pylist()
    # direct synthesis alone asks 2 questions of each of the 6 training images
    assert len(candidates) >= 12 and {c["status"] for c in candidates} <= set(STATUSES)
    assert sum(c["mode"] == "direct" for c in candidates) == 12
    metrics = {(r["step"], r["name"]): r["value"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()}
    assert metrics[(0, "synthesis/candidates")] == len(candidates)
    assert sum(metrics[(0, f"synthesis/{s}")] for s in STATUSES) == len(candidates)
    assert metric_steps(run_dir, "heldout/pass@1") == [0, 1, 2]
    assert metric_steps(run_dir, "train/pseudo_reward") == [1, 2]
    samples = pq.read_table(run_dir / "samples" / "train_step000001.parquet").to_pylist()
    assert len(samples) == 4 * 4 and all("Answer with just the number." in s["prompt"] for s in samples)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"

    finished = evoray("resume", str(run_dir))        # finished: said at once, before Ray
    assert finished.returncode == 2 and "already finished at step 2" in finished.stderr
    resumed = evoray("resume", str(run_dir), "--set", "train.steps=3")     # one step more
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metric_steps(run_dir, "train/pseudo_reward") == [1, 2, 3]
    assert '"event": "resumed"' in (run_dir / "events.jsonl").read_text()
    report = evoray("report", str(run_dir))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (run_dir / "heldout.png").is_file()

