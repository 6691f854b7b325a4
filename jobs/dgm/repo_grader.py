"""Repo tasks graded by ``repo_harness``: the hidden unittest tests, unshadowable, counted.

The repo goes to ``repo/`` and the hidden tests to ``hidden/`` of the sandbox's work dir (no repo
path may leave ``repo/``); the harness runs them in isolated mode and prints a summary keyed by a
fresh nonce; the task passes only when the run ended ``ok``, exactly one summary line carries the
nonce, nothing failed, and every test method the hidden files define (read from their syntax on
the host) passed.

Residual risk, stated plainly: the tests import the repo, so repo code runs inside the tests'
process. It cannot shadow a module or edit a test, and a generic trick (exit 0 early, a fake
``unittest``, printing "OK", monkeypatching ``unittest`` or ``builtins`` and leaving it so) fails;
but code written against this harness can still tamper at run time (patch and restore before the
check, patch the harness itself, or find the nonce in its frames and print a summary). Only comparing plain
outputs outside that process, as HumanEval's grading does, closes that; general test suites
cannot be graded that way.
"""
from __future__ import annotations

import ast
import hashlib
import json
import posixpath
import secrets
from dataclasses import replace
from pathlib import Path

from actors.sandbox.types import ExecRequest, SandboxLimits
from jobs.dgm import repo_harness

HARNESS_SOURCE = Path(repo_harness.__file__).read_text()
REPO, HIDDEN = "repo", "hidden"
DROPPED_PARTS = {"__pycache__"}


def is_test_file(rel: str) -> bool:
    name = posixpath.basename(rel)
    return name.startswith("test") and name.endswith(".py")


def _test_methods(cls: ast.ClassDef, classes: dict, seen: frozenset = frozenset()) -> set[str]:
    own = {n.name for n in cls.body
           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
            own |= _test_methods(classes[base.id], classes, seen | {cls.name})
    return own


def _is_case(cls: ast.ClassDef, classes: dict, seen: frozenset = frozenset()) -> bool:
    for base in cls.bases:
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        if name.endswith("TestCase"):
            return True
        if name in classes and name not in seen and _is_case(classes[name], classes, seen | {cls.name}):
            return True
    return False


def expected_tests(test_files: dict[str, str]) -> set[str]:
    """``module.Class.method`` of every unittest test the hidden test files define."""
    ids = set()
    for rel, text in test_files.items():
        if not is_test_file(rel):
            continue
        module = posixpath.basename(rel)[:-3]
        try:
            tree = ast.parse(text)
        except SyntaxError as e:
            raise ValueError(f"hidden test file {rel} does not parse: {e}") from None
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for cls in classes.values():
            if _is_case(cls, classes):
                ids |= {f"{module}.{cls.name}.{m}" for m in _test_methods(cls, classes)}
    return ids


def check_test_files(test_files: dict[str, str], command: list[str]) -> None:
    """Raise ValueError unless these are unittest tests the harness can run and count."""
    if command[:3] != ["python3", "-m", "unittest"]:
        raise ValueError("'test_command' must be a 'python3 -m unittest ...' command: the hidden "
                         "tests run under evoray's isolated unittest harness")
    stems = [posixpath.basename(safe_path(rel)) for rel in test_files if rel.endswith(".py")]
    if len(stems) != len(set(stems)):
        raise ValueError("hidden .py files must have distinct file names: each is imported by "
                         "its name alone")
    if not expected_tests(test_files):
        raise ValueError("the hidden tests define no unittest.TestCase test methods "
                         "(files named test*.py)")


def safe_path(rel: str) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"path {rel!r} is not a plain relative path")
    return rel


def request(test_files: dict[str, str], repo_files: dict[str, str], timeout_s: float,
            limits: SandboxLimits | None = None) -> tuple[ExecRequest, str]:
    """The scoring exec and its nonce; raises ValueError for a repo path that would leave repo/."""
    files = {f"{REPO}/{safe_path(rel)}": text for rel, text in repo_files.items()
             if not DROPPED_PARTS & set(rel.split("/")) and not rel.endswith(".pyc")}
    files.update({f"{HIDDEN}/{rel}": text for rel, text in test_files.items()})   # written last
    nonce = secrets.token_hex(16)
    stdin = json.dumps({"nonce": nonce, "repo": REPO, "hidden": HIDDEN,
                        "tests": {rel: hashlib.sha256(text.encode()).hexdigest()
                                  for rel, text in test_files.items()}})
    lim = replace(limits or SandboxLimits(), timeout_s=timeout_s)
    return ExecRequest(["python3", "-I", "-B", "-c", HARNESS_SOURCE], files, stdin, lim), nonce


def judge(test_files: dict[str, str], nonce: str, status: str, stdout: str) -> tuple[bool, str]:
    """(passed, why) from the run's status and its nonce-keyed summary."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(f"{repo_harness.PREFIX} {nonce} ")]
    if len(lines) != 1:
        return False, f"{len(lines)} test summaries (want exactly 1): the tests did not run to the end"
    try:
        summary = json.loads(lines[0].split(" ", 2)[2])
        passed = {t for t in summary["passed"] if isinstance(t, str)}
        bad = len(summary["failed"]) + len(summary["errors"])
        changed = [str(t) for t in summary["tampered"]]
    except (ValueError, KeyError, TypeError):
        return False, "unreadable test summary"
    missing = expected_tests(test_files) - passed
    why = (f"{len(passed)} passed, {bad} failed or errored, {len(summary.get('skipped', []))} "
           f"skipped; run ended {status}")
    if missing:
        why += f"; did not pass: {', '.join(sorted(missing)[:10])}"
    if changed:
        why += f"; the test framework was changed while the tests ran: {', '.join(changed)}"
    return status == "ok" and not bad and not missing and not changed, why
