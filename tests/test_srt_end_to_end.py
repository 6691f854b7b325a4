"""SRT through real Ray actors with the real embedded model (SmolLM2-135M on CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "srt-smoke.yaml"
pytestmark = pytest.mark.slow


def evoray(*args: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def metric_steps(run_dir: Path, name: str) -> list[int]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return sorted(r["step"] for r in rows if r["name"] == name)


def test_two_srt_steps_real_actors(tmp_path):
    run_dir = tmp_path / "run"
    proc = evoray("run", str(SMOKE), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    # the contract: config, metrics in long format, samples, events, checkpoints
    assert (run_dir / "config.yaml").is_file()
    table = pq.read_table(run_dir / "metrics.parquet")
    assert [f.name for f in table.schema] == ["step", "name", "value", "time"]
    assert metric_steps(run_dir, "heldout/pass@1") == [0, 1, 2]
    assert metric_steps(run_dir, "heldout/maj@4") == [0, 1, 2]
    assert metric_steps(run_dir, "train/pseudo_reward") == [1, 2]
    samples = pq.read_table(run_dir / "samples" / "train_step000002.parquet").to_pylist()
    assert len(samples) == 4 * 4                       # prompts_per_step × n
    assert {"prompt_id", "text", "answer", "reward", "policy_version"} <= set(samples[0])
    # step 2 was sampled by the policy that step 1's update produced (if step 1 trained at all)
    assert {s["policy_version"] for s in samples} <= {0, 1}
    events = (run_dir / "events.jsonl").read_text()
    assert "run_started" in events and "run_finished" in events
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_killed_run_resumes_with_continuous_metrics(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", str(SMOKE), "--run-dir", str(run_dir),
         "--set", "train.steps=4", "--set", "eval.every=2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.exists() and latest.read_text().strip() >= "step_000002":
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)             # the driver dies without any cleanup
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = int(latest.read_text().strip().removeprefix("step_"))
    assert 2 <= killed_at < 4
    resumed = evoray("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # every step logged exactly once, no gap, no duplicate from the work redone after the kill
    assert metric_steps(run_dir, "train/pseudo_reward") == [1, 2, 3, 4]
    assert metric_steps(run_dir, "heldout/pass@1") == [0, 2, 4]
    events = (run_dir / "events.jsonl").read_text()
    assert '"event": "resumed"' in events
    assert not list((run_dir / "checkpoints").glob(".step_*")), "a temporary checkpoint was left behind"


def test_offline_labels_and_curriculum(tmp_path):
    """Mitigations (ii) and (iii): base-model votes stored in Parquet, then RL against them on the
    easiest half of the prompts; the in-batch curriculum in the same run."""
    run_dir = tmp_path / "run"
    proc = evoray("run", str(SMOKE), "--run-dir", str(run_dir), "--set", "train.steps=1",
                  "--set", "reward.kind=offline_labels", "--set", "reward.offline_rollouts=4",
                  "--set", "curriculum.mode=offline", "--set", "curriculum.keep_fraction=0.5",
                  "--set", "curriculum.rollouts=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    votes = pq.read_table(run_dir / "base_votes.parquet").to_pylist()
    assert len(votes) == 8 and {"id", "label", "share", "rollouts"} <= set(votes[0])
    kept = sorted(votes, key=lambda r: (-r["share"], r["id"]))[:4]
    trained_on = {r["prompt_id"] for r in pq.read_table(run_dir / "samples" / "train_step000001.parquet").to_pylist()}
    assert trained_on <= {r["id"] for r in kept}
    events = [line for line in (run_dir / "events.jsonl").read_text().splitlines() if "base_votes" in line]
    assert events and '"kept": 4' in events[0]


def test_data_parallel_learner_through_the_controller(tmp_path, tiny_number_lm):
    """``learner.workers: 2``: two learner actors joined in a gloo group behind the controller, the
    weights fully sharded (FSDP2: the layout with the most collectives; the others are checked
    against one process in test_learner_data_parallel.py); the steps train, rank 0 checkpoints
    (gathering the shards), both ranks load it on resume. The tiny model: the wiring is under test
    here, the real model's steps are in the tests above."""
    run_dir = tmp_path / "run"
    proc = evoray("run", str(SMOKE), "--run-dir", str(run_dir), "--set", "learner.workers=2",
                  "--set", "learner.num_cpus=0.5", "--set", "learner.strategy=fsdp2",
                  "--set", f"model.name={tiny_number_lm}", "--set", "sampling.n=16",
                  "--set", "reward.require_finished=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    trained = [r["step"] for r in rows if r["name"] == "train/groups_trained" and r["value"] > 0]
    assert trained and set(trained) <= set(metric_steps(run_dir, "train/loss"))
    placed = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
              if '"roles_placed"' in line]
    assert sorted(a["name"].split(":")[-1] for a in placed[0]["roles"]["learner"]) == ["learner", "learner-1"]
    resumed = evoray("resume", str(run_dir), "--set", "train.steps=3")     # finished: one step more
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metric_steps(run_dir, "train/pseudo_reward") == [1, 2, 3]
