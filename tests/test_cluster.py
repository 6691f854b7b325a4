"""A real two-node Ray cluster on this machine: ``ray start --head`` and a second ``ray start
--address`` that alone offers the ``sandbox`` resource, both with Ray's token authentication on.
Jobs go in through ``evoray submit`` (the Ray Jobs API), exactly as on a real cluster."""
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
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "srt-smoke.yaml"
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    gcs: str               # for RAY_ADDRESS / ray.init
    jobs_api: str          # for evoray submit --address
    metrics_port: int
    env: dict
    sandbox_node: str      # the node id of the node with the sandbox resource

    def evoray(self, *args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                              env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


WAIT_FOR_NODES = """
import json, time, ray
ray.init(address="{gcs}")
for _ in range(120):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) == 2:
        break
    time.sleep(1)
print(json.dumps([{{"id": n["NodeID"], "resources": n["Resources"]}} for n in nodes]))
"""


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="evr-", dir="/tmp"))   # short: Ray's socket paths are limited
    env = {**os.environ, "PATH": f"{RAY.parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_task_events_report_interval_ms": "200", "RAY_metrics_report_interval_ms": "1000"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    common = ["--block", f"--temp-dir={temp}", "--disable-usage-stats", "--object-store-memory=300000000"]
    log = open(temp / "nodes.log", "w")
    nodes = [subprocess.Popen([str(RAY), "start", "--head", f"--port={gcs}", "--num-cpus=2",
                               "--include-dashboard=true", f"--dashboard-port={dashboard}",
                               f"--metrics-export-port={metrics}", *common],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        time.sleep(8)
        nodes.append(subprocess.Popen([str(RAY), "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=2",
                                       '--resources={"sandbox": 2}', *common],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        out = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES.format(gcs=f"127.0.0.1:{gcs}")],
                             env=env, capture_output=True, text=True, timeout=180)
        alive = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []
        assert len(alive) == 2, f"cluster did not come up: {out.stderr[-2000:]}\n{(temp / 'nodes.log').read_text()[-2000:]}"
        sandbox_node = next(n["id"] for n in alive if "sandbox" in n["resources"])
        yield Cluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", metrics, env, sandbox_node)
    finally:
        for p in nodes:                       # --block: each node's processes share its group
            os.killpg(p.pid, signal.SIGTERM)
        time.sleep(3)
        for p in nodes:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def tiny_srt(tiny_lm: str, *more: str) -> list[str]:
    return ["--set", f"model.name={tiny_lm}", "--set", "sampling.max_new_tokens=24", *more]


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def steps_of(run_dir: Path, name: str) -> list[int]:
    return sorted(r["step"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist() if r["name"] == name)


class MetricsScraper(threading.Thread):
    """Reads the head's metrics export port (Prometheus text) while a job runs."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url, self.lines, self.done = f"http://127.0.0.1:{port}/metrics", set(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                text = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                continue
            self.lines |= {line for line in text.splitlines() if "evoray_" in line and not line.startswith("#")}


def test_submit_places_sandbox_role_on_its_node_and_exports_metrics(cluster, tiny_lm, tmp_path):
    run_dir = tmp_path / "srt-submitted"
    scraper = MetricsScraper(cluster.metrics_port)
    scraper.start()
    proc = cluster.evoray("submit", str(SMOKE), "--address", cluster.jobs_api, "--run-dir", str(run_dir),
                          *tiny_srt(tiny_lm, "--set", "sandbox.workers=1",
                                    "--set", "sandbox.resources={sandbox: 1}"))
    time.sleep(3)
    scraper.done.set()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stderr
    assert "step    2" in proc.stdout                       # the job's own log lines, followed
    assert steps_of(run_dir, "train/pseudo_reward") == [1, 2]
    placed = next(e for e in events(run_dir) if e["event"] == "roles_placed")["roles"]
    assert placed["sandbox"] and {a["node_id"] for a in placed["sandbox"]} == {cluster.sandbox_node}
    assert {"sampler", "learner"} <= set(placed)
    ours = [line for line in scraper.lines if f'run="{run_dir.name}"' in line]
    assert any("evoray_train_pseudo_reward" in line for line in ours), sorted(scraper.lines)[:20]
    assert any("evoray_heldout_pass_at_1" in line for line in ours)


KILLER = """
import json, sys, time, ray
from pathlib import Path
from ray.util.state import list_tasks
ray.init(address="{gcs}", namespace="evoray")
events, task = Path("{run_dir}") / "events.jsonl", {task!r}
deadline = time.time() + 240
while time.time() < deadline:
    done = [json.loads(l) for l in events.read_text().splitlines()] if events.exists() else []
    if any(e["event"] == {event!r} and e["step"] >= {min_step} for e in done):
        if task is None or list_tasks(filters=[("name", "=", task), ("state", "=", "RUNNING")],
                                      raise_on_missing_output=False):
            ray.kill(ray.get_actor({actor!r}), no_restart=False)
            print(f"killed {actor} while {{task}} ran" if task else "killed {actor}")
            sys.exit(0)
    time.sleep(0.02)
sys.exit("the moment to kill never came")
"""


def kill_actor_when(cluster: Cluster, run_dir: Path, actor: str, event: str, min_step: int = 0,
                    task: str | None = None, wait: bool = True):
    """From another driver: ``ray.kill`` (restartable) run ``actor`` once ``event`` is in the
    run's events.jsonl at ``min_step`` or later and, if given, a ``task`` of that name is RUNNING.
    ``wait=False``: the killer's ``Popen``, already connecting while the caller starts the run."""
    code = KILLER.format(gcs=cluster.gcs, run_dir=run_dir, actor=f"{run_dir.name}:{actor}",
                         event=event, min_step=min_step, task=task)
    if wait:
        return cluster.python(code)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sampler_killed_mid_step_costs_a_retry_not_the_run(cluster, tiny_lm, tmp_path):
    # the killer (another driver) connects before the job is submitted, so the kill lands within the
    # first steps; a step of the tiny model takes half a second and the job needs seconds to start
    STEPS = 40
    run_dir = tmp_path / "srt-kill"
    killer = kill_actor_when(cluster, run_dir, "sampler-0", "checkpoint", min_step=1, task="Sampler.generate",
                             wait=False)
    proc = cluster.evoray("submit", str(SMOKE), "--address", cluster.jobs_api, "--run-dir", str(run_dir),
                          "--no-wait", *tiny_srt(tiny_lm, "--set", f"train.steps={STEPS}", "--set",
                                                 f"eval.every={STEPS}", "--set", "sampling.n=64",
                                                 "--set", "train.prompts_per_step=8",
                                                 "--set", "sampling.max_new_tokens=64"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    out, err = killer.communicate(timeout=300)
    assert killer.returncode == 0 and "while Sampler.generate ran" in out, err[-2000:]
    followed = cluster.evoray("logs", job_id, "--follow", "--address", cluster.jobs_api)
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-2000:]
    restarts = [e for e in events(run_dir) if e["event"] == "actor_restarted"]
    assert restarts and restarts[0]["role"] == "sampler" and restarts[0]["actor"] == f"{run_dir.name}:sampler-0"
    assert restarts[0]["step"] < STEPS - 1                 # mid-run: steps were still to come
    assert steps_of(run_dir, "train/pseudo_reward") == list(range(1, STEPS + 1))   # no step lost or doubled
    assert steps_of(run_dir, "ray/actor_restarts")
    status = cluster.evoray("status", job_id, "--address", cluster.jobs_api)
    assert "SUCCEEDED" in status.stdout and str(run_dir) in status.stdout


def test_stop_a_submitted_job(cluster, tiny_lm, tmp_path):
    run_dir = tmp_path / "srt-stop"
    proc = cluster.evoray("submit", str(SMOKE), "--address", cluster.jobs_api, "--run-dir", str(run_dir),
                          "--no-wait", *tiny_srt(tiny_lm, "--set", "train.steps=500"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    stopped = cluster.evoray("stop", job_id, "--address", cluster.jobs_api)
    assert stopped.returncode == 0 and f"evoray resume {run_dir}" in stopped.stdout
    for _ in range(60):
        status = cluster.evoray("status", job_id, "--address", cluster.jobs_api).stdout
        if "STOPPED" in status:
            break
        time.sleep(1)
    assert "STOPPED" in status
    missing = cluster.evoray("status", "no-such-job", "--address", cluster.jobs_api)
    assert missing.returncode == 2 and "no-such-job" in missing.stderr


def test_more_gpus_than_the_cluster_has_fails_in_seconds(cluster, tiny_lm, tmp_path):
    started = time.monotonic()
    proc = cluster.evoray("run", str(SMOKE), "--run-dir", str(tmp_path / "gpu"),
                          *tiny_srt(tiny_lm, "--set", "sampler.num_gpus=4"), RAY_ADDRESS=cluster.gcs)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2
    assert "role 'sampler' asks for 4 GPU per actor; no node has 'GPU'" in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_colocated_learner_shares_the_first_samplers_node(cluster, tiny_lm, tmp_path):
    run_dir = tmp_path / "srt-colocated"
    proc = cluster.evoray("run", str(SMOKE), "--run-dir", str(run_dir),
                          *tiny_srt(tiny_lm, "--set", "train.steps=1", "--set", "ray.placement=colocated",
                                    "--set", "sampler.num_actors=2"), RAY_ADDRESS=cluster.gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    placed = next(e for e in events(run_dir) if e["event"] == "roles_placed")["roles"]
    by_name = {a["name"]: a["node_id"] for actors in placed.values() for a in actors}
    assert by_name[f"{run_dir.name}:learner"] == by_name[f"{run_dir.name}:sampler-0"]
    reserved = next(e for e in events(run_dir) if e["event"] == "placement_reserved")
    assert reserved["colocated"] is True


def test_dgm_worker_killed_mid_attempt_is_reissued(cluster, tmp_path):
    from tests.test_dgm_loop import issue, write_config
    diagnosis = [{"match": "You improve a coding agent", "reply": issue("ISSUE-IMPROVE")}]
    config = write_config(tmp_path, diagnosis, attempts=1, agent_timeout=20)
    run_dir = tmp_path / "dgm-kill"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(config), "--run-dir", str(run_dir),
                             "--set", "sandbox.resources={sandbox: 1}", "--set", "ray.num_cpus=null"],
                            cwd=ROOT, env={**cluster.env, "RAY_ADDRESS": cluster.gcs},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = kill_actor_when(cluster, run_dir, "sandbox-0", "attempt_started")
    out, err = proc.communicate(timeout=600)
    assert killer.returncode == 0, killer.stderr[-2000:]
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    restarted = [e for e in events(run_dir) if e["event"] == "actor_restarted"]
    assert restarted and restarted[0]["role"] == "sandbox" and restarted[0]["attempt"] == 0
    from jobs.dgm.archive import Archive
    rows = {r.agent_id: r for r in Archive.load(run_dir / "archive.parquet").rows}
    assert set(rows) == {"initial", "a0000"} and rows["a0000"].status == "admitted"   # run again, not lost
