"""One DGM self-improvement attempt, and the agent runs it is made of.

An attempt: diagnose one of the parent's failures (a model reads the parent's code and log and
proposes one change) → the parent agent implements that change on a copy of its own code inside a
sandbox → the diff is the child → staged evaluation → admission. Every piece of model-written code
(the agents, their edits, the solutions) runs only in the sandbox; the hidden tests run in a fresh
exec the agent never saw.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from actors.sandbox import ExecRequest, SandboxLimits
from jobs.dgm.tasks import CodeTask, read_tree, score_task
from jobs.dgm.archive import PatchError, apply_patch, make_patch

AGENT_ENTRY = "coding_agent.py"
SANDBOX_GATEWAY = "unix:///run/evoray/gateway.sock"
LOG_CHARS = 6000


@dataclass
class AgentSettings:
    """What an agent run needs besides its code and task (picklable: it travels to workers)."""
    gateway_url: str           # TCP endpoint, for the host-side diagnosis call
    token: str                 # the run's gateway token: budgeted, not an API key
    model: str | None
    max_steps: int
    max_tokens: int
    temperature: float
    limits: SandboxLimits      # one agent run; timeout_s is the agent's wall time
    test_timeout_s: float
    diagnosis_model: str | None = None
    diagnosis_max_tokens: int = 512


@dataclass
class TaskOutcome:
    task_id: str
    agent_status: str          # the sandbox status of the agent run (ok: the agent ran to its end)
    passed: bool
    test_status: str
    log: str                   # the agent's transcript (tail)
    test_output: str           # the hidden tests' stderr/stdout (tail)
    wall_s: float


@dataclass
class AttemptSpec:
    attempt: int
    generation: int
    child_id: str
    parent_id: str
    parent_files: dict[str, str]
    failed: TaskOutcome | None         # the parent's failure to diagnose (None: no log yet)
    failed_task: CodeTask | None
    stage1: list[CodeTask]
    stage2: list[CodeTask]
    threshold: float
    settings: AgentSettings


@dataclass
class AttemptResult:
    child_id: str
    status: str                        # admitted | rejected | error
    score: float
    stage: str
    n_tasks: int
    n_solved: int
    patch: str
    detail: str
    outcomes: list[TaskOutcome] = field(default_factory=list)
    issue: dict = field(default_factory=dict)
    wall_s: float = 0.0
    self_improve_log: str = ""


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def main_file(files: dict[str, str]) -> str | None:
    py = [f for f in files if f.endswith(".py")]
    return py[0] if len(py) == 1 else None


def run_agent(sandbox, agent: dict[str, str], repo: dict[str, str], statement: str,
              s: AgentSettings, main: str | None) -> tuple[str, dict[str, str], str, float]:
    """Run ``agent`` on ``repo`` in the sandbox; (sandbox status, repo after, log, wall s)."""
    task = {"statement": statement, "repo_dir": "/work/repo", "main_file": main, "model": s.model,
            "max_steps": s.max_steps, "max_tokens": s.max_tokens, "temperature": s.temperature,
            "log_path": "/work/agent_log.md"}
    files = {**{f"agent/{k}": v for k, v in agent.items()},
             **{f"repo/{k}": v for k, v in repo.items()}, "task.json": json.dumps(task)}
    req = ExecRequest(["python3", f"agent/{AGENT_ENTRY}", "task.json"], files, limits=s.limits,
                      collect=["repo/**", "agent_log.md"],
                      env={"EVORAY_GATEWAY": SANDBOX_GATEWAY, "EVORAY_GATEWAY_TOKEN": s.token})
    r = sandbox.run(req)
    after = {k[len("repo/"):]: v for k, v in r.files.items() if k.startswith("repo/")}
    log = r.files.get("agent_log.md", "") + (f"\n## agent stderr\n{r.stderr[-2000:]}" if r.stderr else "")
    return r.status, after, log[-LOG_CHARS:], r.wall_s


def solve_and_score(sandbox, agent: dict[str, str], task: CodeTask, s: AgentSettings) -> TaskOutcome:
    status, repo, log, wall = run_agent(sandbox, agent, task.files, task.statement, s,
                                        main_file(task.files))
    result = score_task(sandbox, task, repo or task.files)
    tail = (result.stderr_tail or result.stdout_tail or "")[-1500:]
    return TaskOutcome(task.task_id, status, result.passed, result.status, log, tail,
                       wall + result.wall_s)


def evaluate(sandbox, threads, agent: dict[str, str], tasks: list[CodeTask],
             s: AgentSettings) -> list[TaskOutcome]:
    return list(threads.map(lambda t: solve_and_score(sandbox, agent, t, s), tasks))


DIAGNOSE_PROMPT = """You improve a coding agent. Below are its source code, a task it failed, its log on that task and the test results.
Answer with one JSON object with the keys "log_summarization", "potential_improvements", "improvement_proposal", "implementation_suggestion", "problem_description". The problem_description is a short issue, written for the agent itself, describing one change to its own code that would make it solve tasks like this one.

# Agent source
{source}

# Task
{task}

# Agent log
{log}

# Test results
{tests}
"""


def diagnose(s: AgentSettings, agent: dict[str, str], failed: TaskOutcome | None,
             task: CodeTask | None) -> dict:
    """The model's proposal as a dict; unparseable JSON keeps the raw text as the issue."""
    source = "\n\n".join(f"## {name}\n```python\n{text}```" for name, text in sorted(agent.items())
                         if name.endswith(".py") and name != "llm_client.py")
    prompt = DIAGNOSE_PROMPT.format(source=source, task=task.statement if task else "(none yet)",
                                    log=failed.log[-3000:] if failed else "(no log)",
                                    tests=failed.test_output if failed else "(none)")
    reply = gateway_chat(s, [{"role": "user", "content": prompt}])
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        issue = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        issue = {}
    if not isinstance(issue, dict) or not str(issue.get("problem_description", "")).strip():
        issue = {"problem_description": reply.strip()[:2000], "unparsed": True}
    return issue


def gateway_chat(s: AgentSettings, messages: list[dict]) -> str:
    body = json.dumps({"model": s.diagnosis_model or s.model, "messages": messages,
                       "max_tokens": s.diagnosis_max_tokens, "temperature": 0.7}).encode()
    req = urllib.request.Request(f"{s.gateway_url}/chat/completions", body, method="POST",
                                 headers={"Authorization": f"Bearer {s.token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"gateway answered {e.code}: {e.read()[:300]!r}") from None


SELF_IMPROVE = """The repository is the source code of a coding agent: you. Change it to resolve this issue, keeping the agent runnable (`python3 {entry} task.json`).

Issue:
{issue}"""


def self_improve(sandbox, parent: dict[str, str], issue: dict, s: AgentSettings) -> tuple[str, str]:
    """The parent edits a copy of its own code; return (patch, the parent's transcript)."""
    statement = SELF_IMPROVE.format(entry=AGENT_ENTRY, issue=issue["problem_description"])
    _, child, log, _ = run_agent(sandbox, parent, parent, statement, s, AGENT_ENTRY)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        patch = make_patch(write_tree(Path(a), parent), write_tree(Path(b), child or parent))
    return patch, log


def admission(outcomes: list[TaskOutcome]) -> tuple[bool, str]:
    """The child must run (its process ends normally on some task) and solve at least one task."""
    if not any(o.agent_status == "ok" for o in outcomes):
        statuses = sorted({o.agent_status for o in outcomes})
        return False, f"the agent never ran to completion ({', '.join(statuses)})"
    if not any(o.passed for o in outcomes):
        return False, "solved no task"
    return True, ""


def run_attempt(sandbox, threads, spec: AttemptSpec) -> AttemptResult:
    t0 = time.monotonic()

    issue = diagnose(spec.settings, spec.parent_files, spec.failed, spec.failed_task)
    patch, log = self_improve(sandbox, spec.parent_files, issue, spec.settings)

    def done(status: str, detail: str, outcomes=(), stage="none", patch=""):
        solved = sum(o.passed for o in outcomes)
        return AttemptResult(spec.child_id, status, solved / len(outcomes) if outcomes else 0.0,
                             stage, len(outcomes), solved, patch, detail, list(outcomes),
                             issue, time.monotonic() - t0, log)

    if not patch.strip():
        return done("rejected", "empty patch: the parent changed nothing")
    child = check_patch_applies(spec.parent_files, patch)   # exactly what the archive rebuilds
    outcomes = evaluate(sandbox, threads, child, spec.stage1, spec.settings)
    ok, why = admission(outcomes)
    if not ok:
        return done("rejected", why, outcomes, "stage1", patch)
    stage = "stage1"
    if spec.stage2 and sum(o.passed for o in outcomes) / len(outcomes) >= spec.threshold:
        outcomes += evaluate(sandbox, threads, child, spec.stage2, spec.settings)
        stage = "stage2"
    return done("admitted", "", outcomes, stage, patch)


def check_patch_applies(parent: dict[str, str], patch: str) -> dict[str, str]:
    """The child as the archive will rebuild it (parent + patch) — what gets evaluated."""
    with tempfile.TemporaryDirectory() as d:
        root = write_tree(Path(d), parent)
        try:
            apply_patch(root, patch)
        except PatchError as e:
            raise RuntimeError(f"the child's patch does not apply to its parent: {e}") from e
        return read_tree(root)


def pick_failure(outcomes: list[dict], rng: random.Random) -> dict | None:
    """Mostly a random task the parent failed (the paper); any task when it failed none."""
    failed = [o for o in outcomes if not o["passed"]]
    pool = failed or outcomes
    return rng.choice(pool) if pool else None
