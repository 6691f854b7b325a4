"""SRT's grading as one function (``jobs.srt.rewards.grade_groups``), the same file run as a program
by the system Python, and inside the real bubblewrap sandbox by the ``sandbox`` role's actor."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import jobs.srt.rewards
from jobs.srt.grader import AnswerGrader
from actors.sandbox.types import SandboxError
from jobs.srt.rewards import grade_groups

REWARD = {"kind": "majority_vote", "extraction": "boxed_or_last_number", "require_finished": True,
          "equivalence": "exact", "soft": False, "threshold": 0.0}
GROUPS = [{"texts": ["1 + 1 is 2", "\\boxed{2}", "it is 3", "so 2 and"], "finished": [True, True, True, False],
           "label": "3"},
          {"texts": ["no idea", "none"], "finished": [True, True], "label": None}]


def test_majority_vote_by_hand():
    first, second = grade_groups(GROUPS, REWARD)
    # the cut-off reply has no answer; "2" wins 2 of 4
    assert first == {"answers": ["2", "2", "3", None], "rewards": [1.0, 1.0, 0.0, 0.0], "majority": "2",
                     "share": 0.5, "skipped": False}
    assert second == {"answers": [None, None], "rewards": [0.0, 0.0], "majority": None, "share": 0.0,
                      "skipped": True}


def test_labels_replace_the_votes_rewards():
    first, second = grade_groups(GROUPS, {**REWARD, "kind": "ground_truth"})
    assert first["rewards"] == [0.0, 0.0, 1.0, 0.0] and first["majority"] == "2"
    assert second["skipped"] and second["rewards"] == [0.0, 0.0]     # no label: nothing to learn
    soft = grade_groups(GROUPS[:1], {**REWARD, "soft": True})[0]
    assert soft["rewards"] == [0.5, 0.5, 0.25, 0.0]


def test_the_file_is_a_stdlib_program():
    """What the sandbox runs: jobs/srt/rewards.py under the system Python, JSON in and out."""
    out = subprocess.run(["/usr/bin/python3", jobs.srt.rewards.__file__], input=json.dumps({"groups": GROUPS, "reward": REWARD}),
                         capture_output=True, text=True, timeout=60, env={}, cwd="/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == grade_groups(GROUPS, REWARD)


@pytest.fixture
def bwrap_grader():
    if not Path("/usr/bin/bwrap").exists():
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    grader = AnswerGrader("bwrap", timeout_s=30, memory_mb=256)
    yield grader
    grader.close()


def test_grading_inside_bubblewrap_matches(bwrap_grader):
    assert bwrap_grader.ready() == "BwrapSandbox"
    assert bwrap_grader.grade(GROUPS, REWARD) == grade_groups(GROUPS, REWARD)


def test_math_equivalence_needs_math_verify_in_the_sandbox(bwrap_grader):
    has = subprocess.run(["/usr/bin/python3", "-c", "import math_verify"], capture_output=True).returncode == 0
    if has:
        pytest.skip("the system Python has math-verify: the sandbox can grade with it")
    with pytest.raises(SandboxError, match="reward.equivalence: math needs math-verify in the sandbox"):
        bwrap_grader.ready("math")


def test_a_grading_failure_is_a_clear_error(bwrap_grader):
    with pytest.raises(SandboxError, match="grading in the sandbox ended with error"):
        bwrap_grader.grade(GROUPS, {**REWARD, "equivalence": "no-such-rule"})


def test_grading_inside_docker_matches():
    from tests.conftest import require_docker
    require_docker()
    grader = AnswerGrader("docker", timeout_s=30, memory_mb=256)
    try:
        assert grader.ready() == "DockerSandbox"
        assert grader.grade(GROUPS, REWARD) == grade_groups(GROUPS, REWARD)
    finally:
        grader.close()
