"""The UI-Genie job through real Ray actors — sampler, reward model, device pool of simulated
devices, Ray Train runs for the agent's SFT and the reward model's head — with a tiny random
model: the mechanics end to end (every dataset, metric, checkpoint and the report) through a killed
run resumed with continuous metrics.

A random model's replies never parse, so every step carries a per-step error: exactly what must
never crash a run. (The real model's numbers come from `make uigenie-demo`, see the README.)"""
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

from tests.conftest import build_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "uigenie-smoke.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_long_lm(tmp_path_factory) -> str:
    """The conftest tiny model with room for a screen's worth of prompt (4096 positions)."""
    path = tmp_path_factory.mktemp("tiny_long_lm")
    build_model(max_positions=4096).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


def settings(model: str, generations: int = 2) -> list[str]:
    sets = [f"model.name={model}", f"loop.generations={generations}", "tasks.n_seed=3",
            "tasks.n_explore=2", "tasks.n_heldout=2", "tasks.max_steps=2", "agent.max_new_tokens=6",
            "reward_model.epochs=5", "ray.num_cpus=2", "ray.include_dashboard=false"]
    return [x for s in sets for x in ("--set", s)]


def evoray(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def steps_of(run_dir: Path, name: str) -> list[int]:
    return sorted(r["step"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist() if r["name"] == name)


def test_killed_run_resumes_to_every_dataset_checkpoint_and_the_report(tmp_path, tiny_long_lm):
    """One run, its driver SIGKILLed after the first checkpoint and resumed: the metrics go on
    without a gap or a repeat, and the run ends with everything an unbroken run has (one run for
    both: each costs ~1.5 min here)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(SMOKE), "--run-dir",
                             str(run_dir), *settings(tiny_long_lm)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and not latest.exists() and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)             # the driver dies without any cleanup
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = latest.read_text().strip()
    assert done in ("step_000000", "step_000001")
    killed_after = int(done.split("_")[1])
    resumed = evoray("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed after generation {killed_after}" in resumed.stdout
    for name in ("gen/success_rate", "rm/step_f1", "rm/outcome_f1", "data/agent_examples",
                 "data/rm_examples", "eval/step_error_rate"):
        assert steps_of(run_dir, name) == [0, 1, 2], name
    assert steps_of(run_dir, "explore/solved_rate") == [1, 2]
    ds = run_dir / "datasets"
    for name in ("agent_gen0", "rm_gen0", "rm_heldout", "trajectories_heldout_gen2",
                 "trajectories_explore_gen1"):
        assert (ds / f"{name}.parquet").is_file(), name
    agent = pq.read_table(ds / "agent_gen0.parquet").to_pylist()
    assert agent and all(r["source"] == "reference" for r in agent)   # the seed tasks' references
    rm = pq.read_table(ds / "rm_gen0.parquet").to_pylist()
    assert {r["label"] for r in rm} == {0, 1} and all(r["png"].startswith(b"\x89PNG") for r in rm)
    episodes = pq.read_table(ds / "trajectories_heldout_gen2.parquet").to_pylist()
    steps = [s for e in episodes for s in e["steps"]]
    assert len(episodes) == 2 and steps and all(s["png"].startswith(b"\x89PNG") for s in steps)
    assert all(s["error"] for s in steps), "a random model's replies are malformed: recorded, not fatal"
    last = run_dir / "checkpoints" / "step_000002"
    assert latest.read_text().strip() == last.name
    assert {"agent", "rm", "state.json"} <= {p.name for p in last.iterdir()}
    # the agent SFT gave in generation 0 went through the resume into the last checkpoint
    assert (last / "agent" / "sft.json").is_file()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "run_started" in kinds and "resumed" in kinds
    # each generation reported once: the killed driver's last one only if the kill came after it
    at = kinds.index("resumed")
    before = {e["step"] for e in events[:at] if e["event"] == "generation_done"}
    after = [e["step"] for e in events[at:] if e["event"] == "generation_done"]
    assert set(range(killed_after)) <= before <= set(range(killed_after + 1))
    assert after == list(range(killed_after + 1, 3))
    report = evoray("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert (run_dir / "uigenie_generations.png").stat().st_size > 10_000
    assert "| 2 |" in (run_dir / "report.md").read_text()
