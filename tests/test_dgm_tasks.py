"""jobs.dgm.tasks: loading repo-level tasks from JSONL and scoring them in the bwrap sandbox."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.dgm import tasks as T

EXAMPLES = Path(T.__file__).parent / "examples" / "repo_tasks.jsonl"

STATS_FIX = '''
def mean(xs):
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)


def median(xs):
    if not xs:
        raise ValueError("median of an empty list")
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
'''
SLUG_FIX = '''import re


def slugify(title):
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
'''


@pytest.fixture(scope="module")
def bwrap():
    from actors.sandbox import make_sandbox
    return make_sandbox("bwrap")


def test_examples_load():
    stats, slug = T.repo_tasks(EXAMPLES)
    assert stats.task_id == "stats-median-even" and "even length" in stats.statement
    assert set(stats.files) == {"stats.py", "README.md"}
    assert set(stats.test_files) == {"test_stats.py"}       # from test_dir
    assert stats.test_command[:3] == ["python3", "-m", "unittest"] and stats.timeout_s == 20.0
    assert set(slug.files) == {"textutil/__init__.py", "textutil/slug.py"}
    assert set(slug.test_files) == {"tests/test_slug.py"}   # inline test_files
    assert not set(slug.files) & set(slug.test_files)       # the agent never sees the tests


def test_examples_fail_as_shipped_and_pass_when_fixed(bwrap):
    stats, slug = T.repo_tasks(EXAMPLES)
    before = T.score_many(bwrap, [(stats, stats.files), (slug, slug.files)], threads=2)
    assert [(r.task_id, r.passed, r.status) for r in before] == [
        ("stats-median-even", False, "error"), ("textutil-slug-dashes", False, "error")]
    assert "test_median_even" in before[0].stderr_tail
    fixed = [(stats, {**stats.files, "stats.py": STATS_FIX}),
             (slug, {**slug.files, "textutil/slug.py": SLUG_FIX})]
    after = T.score_many(bwrap, fixed, threads=2)
    assert [r.passed for r in after] == [True, True], [r.stderr_tail for r in after]
    assert all(r.status == "ok" and r.wall_s > 0 for r in after)


def test_agent_cannot_replace_the_hidden_tests(bwrap):
    stats, _ = T.repo_tasks(EXAMPLES)
    fake = "import sys\nsys.exit(0)\n"   # a planted test file of the same name is never imported
    r = T.score_task(bwrap, stats, {**stats.files, "test_stats.py": fake})
    assert not r.passed and r.status == "error" and "test_median_even" in r.stderr_tail


def test_humaneval_exit_on_import_does_not_pass(bwrap):
    task = T.humaneval_tasks([2])[0]
    assert task.task_id == "HumanEval/2" and "truncate_number" in task.statement
    assert task.test_files == {} and "check(" not in repr(task.humaneval.calls)   # nothing hidden travels
    good = T.score_task(bwrap, task, T.completion_to_repo(task, "    return number % 1.0\n"))
    assert good.passed and good.status == "ok" and "hidden test passed" in good.stderr_tail
    hack = {"solution.py": "import os\nos._exit(0)\n"}
    r = T.score_task(bwrap, task, hack)
    assert r.status == "ok" and not r.passed     # exit 0, but it never answered a call


def test_humaneval_request_carries_no_test_and_no_expected_output():
    from jobs.dgm.humaneval_grader import request
    task = T.humaneval_tasks([2])[0]
    req = request(task.humaneval, T.completion_to_repo(task, "    return 0.5\n"), 3.0)
    seen = " ".join(req.command) + req.stdin + json.dumps(req.files) + json.dumps(req.env)
    assert "def check" not in seen and "assert" not in seen and set(req.files) == {"solution.py"}
    assert "3.5" in seen and "0.5" not in req.stdin      # the inputs go in, the expected outputs not


def test_repo_tasks_need_unittest_tests_the_host_can_count(tmp_path):
    from jobs.dgm.repo_grader import check_test_files, expected_tests
    tests = {"tests/test_a.py": "import unittest\nclass Base:\n    def test_x(self): pass\n"
                                "class T(Base, unittest.TestCase):\n    def test_y(self): pass\n"
                                "class NotACase:\n    def test_z(self): pass\n",
             "tests/helper.py": "class U(unittest.TestCase):\n    def test_no(self): pass\n"}
    assert expected_tests(tests) == {"test_a.T.test_x", "test_a.T.test_y"}
    with pytest.raises(ValueError, match="'test_command' must be a 'python3 -m unittest"):
        check_test_files(tests, ["pytest", "-q"])
    with pytest.raises(ValueError, match="define no unittest"):
        check_test_files({"test_b.py": "def test_f(): pass\n"}, ["python3", "-m", "unittest"])
    with pytest.raises(ValueError, match="not a plain relative path"):
        check_test_files({"../test_c.py": tests["tests/test_a.py"]}, ["python3", "-m", "unittest"])


def test_unknown_humaneval_id():
    with pytest.raises(KeyError, match="HumanEval/999"):
        T.humaneval_tasks([999])


GOOD_TESTS = {"test_a.py": "import unittest\nclass T(unittest.TestCase):\n    def test_a(self): pass\n"}


@pytest.mark.parametrize("line, message", [
    ("{not json", "Expecting property name"),
    (json.dumps({"task_id": "a", "statement": "s", "test_command": ["x"], "test_dir": "t"}),
     "missing key.*repo_dir"),
    (json.dumps({"task_id": "a", "statement": "s", "repo_dir": "r", "test_command": ["x"]}),
     "exactly one of 'test_files' and 'test_dir'"),
    (json.dumps({"task_id": "a", "statement": "s", "repo_dir": "nope", "test_command": ["x"],
                 "test_files": {}}), "'repo_dir'.*is not a directory"),
    (json.dumps({"task_id": "a", "statement": "s", "repo_dir": "r", "test_command": "pytest",
                 "test_files": {}}), "'test_command' must be"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.py").write_text("x = 1\n")
    good = json.dumps({"task_id": "ok", "statement": "s", "repo_dir": "r",
                       "test_command": ["python3", "-m", "unittest"], "test_files": GOOD_TESTS})
    path = tmp_path / "tasks.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(T.TaskFileError, match=message) as e:
        T.repo_tasks(path)
    assert str(e.value).startswith(f"{path}:3: ")


def test_duplicate_task_ids(tmp_path):
    (tmp_path / "r").mkdir()
    line = json.dumps({"task_id": "a", "statement": "s", "repo_dir": "r",
                       "test_command": ["python3", "-m", "unittest"], "test_files": GOOD_TESTS})
    path = tmp_path / "tasks.jsonl"
    path.write_text(line + "\n" + line + "\n")
    with pytest.raises(T.TaskFileError, match=r":2: duplicate task_id 'a'"):
        T.repo_tasks(path)
