"""Asynchronous SRT through real Ray actors (tiny model; labels as the reward so that every group
trains, whatever the random model writes): step k+1's samples are generated while
step k trains, one policy version behind, and each trained sample carries its staleness and its
truncated importance-sampling weight."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_async_rollouts_lag_one_version_and_record_is_weights(tmp_path, tiny_lm):
    run_dir = tmp_path / "async"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "jobs/configs/srt-smoke.yaml", "--run-dir", str(run_dir),
         "--set", f"model.name={tiny_lm}", "--set", "train.mode=async", "--set", "train.steps=3",
         "--set", "train.skip_uniform_groups=false", "--set", "reward.kind=ground_truth",
         "--set", "ray.num_cpus=2",
         "--set", "ray.include_dashboard=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    assert "tis_cap: 2.0" in config                      # async turns the correction on
    for step, (version, staleness) in {1: (0, 0), 2: (0, 1), 3: (1, 1)}.items():
        rows = pq.read_table(run_dir / "samples" / f"train_step{step:06d}.parquet").to_pylist()
        # step 2 was launched before step 1 trained; step 3 before step 2 trained
        assert {r["policy_version"] for r in rows} == {version}, step
        assert {r["staleness"] for r in rows} == {staleness}, step
        assert all(0 < r["is_weight"] <= 2.0 for r in rows if r["trained"]) and any(r["trained"] for r in rows)
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    series = sorted((m["step"], m["value"]) for m in metrics if m["name"] == "train/staleness_max")
    assert series == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert [m for m in metrics if m["name"] == "train/is_weight_mean"]
