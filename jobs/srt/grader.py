"""The ``sandbox`` role of SRT: grade model-written answers inside the sandbox.

Grading parses text the model wrote (regexes, and with ``equivalence: math`` sympy through
math-verify, whose parsers may evaluate what they read and can hang on adversarial input), so on a
cluster it runs in a sandboxed process with no network and capped memory and time, on the nodes
that offer the ``sandbox`` resource. The program is ``jobs/srt/rewards.py`` itself: one way to grade.
"""
from __future__ import annotations

import json
from pathlib import Path

import jobs.srt.rewards
from actors.sandbox import ExecRequest, SandboxLimits, make_sandbox
from actors.sandbox.types import SandboxError

GRADER_SOURCE = Path(jobs.srt.rewards.__file__).read_text()


class AnswerGrader:
    def __init__(self, backend: str = "auto", timeout_s: float = 30.0, memory_mb: int = 512):
        self.limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
        self.sandbox = make_sandbox(backend, self.limits)

    def ready(self, equivalence: str = "exact") -> str:
        """The backend's name, after checking the sandbox's Python can grade this way."""
        if equivalence == "math":
            probe = self.sandbox.run(ExecRequest.program("import math_verify", "", self.limits))
            if probe.status != "ok":
                raise SandboxError("reward.equivalence: math needs math-verify in the sandbox's Python "
                                   "(build the sandbox image with it, or grade with sandbox.workers: 0)")
        return type(self.sandbox).__name__

    def grade(self, groups: list[dict], reward: dict) -> list[dict]:
        stdin = json.dumps({"groups": groups, "reward": reward})
        result = self.sandbox.run(ExecRequest.program(GRADER_SOURCE, stdin, self.limits))
        if result.status != "ok":
            raise SandboxError(f"grading in the sandbox ended with {result.status}: {result.stderr[-400:]}")
        return json.loads(result.stdout)

    def close(self) -> None:
        self.sandbox.close()
