"""The DGM loop end to end with recorded model replies: real Ray, real sandboxes (bwrap), the
real seed agent, the real gateway — only the model is a script.

A child that improves the agent is admitted; one that breaks it is rejected; one that hangs is
timed out; the archive and lineage are exact; killing the run and resuming loses nothing.
"""
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
import yaml

from jobs.dgm.archive import Archive

REPO = Path(__file__).resolve().parents[1]
ADD = "```python\n# file: solution.py\ndef add(x: int, y: int):\n    return x + y\n```"
STRLEN_OK = "```python\n# file: solution.py\ndef strlen(string: str) -> int:\n    return len(string)\n```"
STRLEN_BAD = "```python\n# file: solution.py\ndef strlen(string: str) -> int:\n    return 0\n```"
PROMPT = "You are a careful software engineer."


def issue(text: str) -> str:
    return json.dumps({"log_summarization": "-", "potential_improvements": "-",
                       "improvement_proposal": "-", "implementation_suggestion": "-",
                       "problem_description": text})


def bash(cmd: str) -> str:
    return f"```bash\n{cmd}\n```"


IMPROVE = bash(f"sed -i 's/{PROMPT}/{PROMPT} Think step by step./' coding_agent.py")
BREAK = bash("sed -i 's/^import json$/import json, module_that_does_not_exist/' coding_agent.py")
HANG = bash("sed -i 's/^import json$/import json, time; time.sleep(10**6)/' coding_agent.py")

# the task rules: the improved agent (its system prompt says "Think step by step") solves strlen
TASK_RULES = [
    {"match": r"Think step by step\.[\s\S]*Implement the function `strlen`", "reply": STRLEN_OK},
    {"match": r"Implement the function `strlen`", "reply": STRLEN_BAD},
    {"match": r"Implement the function `add`", "reply": ADD},
]
SELF_IMPROVE_RULES = [
    {"match": r"ISSUE-IMPROVE", "reply": IMPROVE},
    {"match": r"ISSUE-BREAK", "reply": BREAK},
    {"match": r"ISSUE-HANG", "reply": HANG},
]


def write_config(tmp_path: Path, diagnosis_rules: list, attempts: int, agent_timeout: float,
                 backend: str = "bwrap") -> Path:
    replies = tmp_path / "replies.yaml"
    # diagnosis first: its prompt quotes the agent's code and task logs, which other rules match
    replies.write_text(yaml.safe_dump(diagnosis_rules + SELF_IMPROVE_RULES + TASK_RULES))
    cfg = {
        "job": "dgm", "name": "dgm-test",
        "gateway": {"routes": [{"name": "scripted", "backend": "replay", "replies": str(replies)}]},
        "sandbox": {"backend": backend, "pool_size": 2, "agent_timeout_s": agent_timeout,
                    "test_timeout_s": 5},
        "tasks": {"benchmark": "humaneval", "ids": ["HumanEval/53", "HumanEval/23"],
                  "stage1": 2, "stage2": 0, "shuffle_seed": None},
        "agent": {"max_steps": 1},
        "loop": {"attempts": attempts, "workers": 1, "selection": "best", "worker_num_cpus": 0},
        "ray": {"num_cpus": 2, "include_dashboard": False},
    }
    path = tmp_path / "dgm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def evoray(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, **kw)


def rows(run_dir: Path) -> dict:
    return {r.agent_id: r for r in Archive.load(run_dir / "archive.parquet").rows}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_improve_break_hang(tmp_path, backend, request):
    if backend == "docker":
        request.getfixturevalue("docker_engine")
    diagnosis = [{"match": "You improve a coding agent", "reply": issue(f"ISSUE-{kind}"), "times": 1}
                 for kind in ("IMPROVE", "BREAK", "HANG")]
    run_dir = tmp_path / "run"
    out = evoray("run", str(write_config(tmp_path, diagnosis, 3, 6, backend)), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a = rows(run_dir)
    assert set(a) == {"initial", "a0000", "a0001", "a0002"}
    assert (a["initial"].status, a["initial"].score, a["initial"].parent_id) == ("admitted", 0.5, None)
    # improved: the seed solved add only; the child solves both
    assert (a["a0000"].status, a["a0000"].score, a["a0000"].parent_id) == ("admitted", 1.0, "initial")
    assert "Think step by step." in a["a0000"].patch and a["a0000"].generation == 1
    # broken: cannot even import; hangs: every run timed out. Both children of the best agent.
    assert (a["a0001"].status, a["a0001"].parent_id) == ("rejected", "a0000")
    assert "never ran to completion (error)" in a["a0001"].detail
    assert "module_that_does_not_exist" in a["a0001"].patch
    assert (a["a0002"].status, a["a0002"].parent_id) == ("rejected", "a0000")
    assert "never ran to completion (timeout)" in a["a0002"].detail
    arch = Archive.load(run_dir / "archive.parquet")
    assert arch.lineage("a0002") == ["initial", "a0000", "a0002"]
    assert arch.children_count("a0000") == 0 and arch.children_count("initial") == 1
    # the archive rebuilds the improved agent from patches alone
    seed = REPO / "jobs" / "dgm" / "seed_agent"
    dest = arch.materialize("a0000", seed, tmp_path / "a0000")
    assert "Think step by step." in (dest / "coding_agent.py").read_text()
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    best = [m["value"] for m in metrics if m["name"] == "dgm/best_score"]
    assert best == [0.5, 1.0, 1.0, 1.0]
    report = evoray("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert (run_dir / "dgm_lineage.png").stat().st_size > 1000


@pytest.mark.slow
def test_kill_and_resume_loses_nothing(tmp_path):
    # content-keyed replies, so the resumed process gets the same answers as the killed one
    diagnosis = [
        {"match": r"You improve a coding agent[\s\S]*Think step by step\.", "reply": issue("ISSUE-HANG")},
        {"match": r"You improve a coding agent", "reply": issue("ISSUE-IMPROVE")},
    ]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "services.cli", "run", str(write_config(tmp_path, diagnosis, 2, 20)),
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:   # kill while attempt 1 (the hanging child) is running
        if events.exists() and '"attempt": 1, "generation"' in events.read_text():
            break
        time.sleep(0.5)
    else:
        pytest.fail("attempt 1 never started")
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = rows(run_dir)
    assert set(before) == {"initial", "a0000"}

    out = evoray("resume", str(run_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = rows(run_dir)
    assert set(after) == {"initial", "a0000", "a0001"}
    for k in before:   # nothing already in the archive changed
        assert after[k] == before[k]
    assert (after["a0001"].parent_id, after["a0001"].status, after["a0001"].attempt) == ("a0000", "rejected", 1)
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    resumed = [e for e in lines if e["event"] == "run_started"][-1]
    assert resumed["resumed"] == [1]
    assert len([e for e in lines if e["event"] == "attempt_started"]) == 2   # no second child


@pytest.mark.slow
def test_spent_budget_stops_new_attempts(tmp_path):
    diagnosis = [{"match": "You improve a coding agent", "reply": issue("ISSUE-IMPROVE")}]
    config = write_config(tmp_path, diagnosis, 3, 6)
    run_dir = tmp_path / "run"
    out = evoray("run", str(config), "--run-dir", str(run_dir), "--set", "gateway.max_tokens=30")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert set(rows(run_dir)) == {"initial"}   # no attempt started, none recorded as an error
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    spent = [e for e in events if e["event"] == "budget_spent"]
    assert len(spent) == 1 and "token budget spent" in spent[0]["detail"]
    assert not [e for e in events if e["event"] == "attempt_started"]
