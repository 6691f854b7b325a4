"""The in-sandbox runner of a repo task's hidden unittest tests (stdlib only).

Run as ``python3 -I -B -c <this file>`` from the work dir, which holds ``repo/`` (the agent's files)
and ``hidden/`` (the tests); stdin: ``{"nonce", "tests": {path: sha256}, "repo", "hidden"}``.

- Isolated mode: neither the work dir nor the script's dir is on ``sys.path`` and PYTHON* variables
  are ignored, so no repo file is imported at start-up (``sitecustomize``, ``usercustomize``,
  ``.pth`` files only count in the read-only site dirs).
- Every hidden file is read once, checked against the host's hash and then imported from memory,
  so nothing the repo does on disk changes the tests.
- Imports resolve stdlib (and site-packages) first, then the hidden files, then the repo: a repo's
  ``unittest.py``, ``conftest.py`` or ``pytest/`` shadows nothing the tests import.
- The summary line carries the per-task nonce, and lists each test that passed; the host requires
  exactly one such line and every hidden test in it, so exiting 0 early, or printing unittest's
  "OK", is a failure. It also names any attribute of ``unittest`` or ``builtins`` that changed
  during the run (a repo monkeypatching the test framework), which fails the task.
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import traceback
import unittest

PREFIX = "EVORAY-SUMMARY"


class HiddenFinder:
    """Serves the verified hidden files by module name, after the stdlib and before the repo."""

    def __init__(self, sources: dict, root: str, stdlib: list):
        self.by_name = {}
        for rel, text in sources.items():
            name = os.path.basename(rel)[:-3]
            if rel.endswith(".py") and importlib.machinery.PathFinder.find_spec(name, stdlib) is None:
                self.by_name[name] = (os.path.join(root, rel), text)

    def find_spec(self, name, path=None, target=None):
        if path is not None or name not in self.by_name:
            return None
        filename, text = self.by_name[name]
        return importlib.util.spec_from_file_location(name, filename, loader=SourceLoader(text))


class SourceLoader:
    def __init__(self, text: str):
        self.text = text

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.text, module.__file__, "exec"), module.__dict__)


class Result(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.passed = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.append(test.id())


def snapshot() -> dict:
    """Every attribute of the test framework's modules and classes, and of builtins, by identity:
    a repo that monkeypatches them (``TestCase.assertEqual = ...``) is caught afterwards."""
    import builtins
    found = {}
    for mod in [builtins] + [m for n, m in sorted(sys.modules.items()) if n.startswith("unittest")]:
        found[mod.__name__] = {k: id(v) for k, v in vars(mod).items() if k != "_"}
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and getattr(obj, "__module__", "").startswith("unittest"):
                found[f"{mod.__name__}.{name}"] = {k: id(v) for k, v in vars(obj).items()}
    return found


def tampered(before: dict) -> list:
    after = snapshot()
    return sorted(f"{owner}.{k}" for owner, attrs in before.items()
                  for k, v in attrs.items() if after.get(owner, {}).get(k) != v)[:20]


def read_verified(root: str, tests: dict) -> dict:
    sources = {}
    for rel, digest in tests.items():
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"hidden file {rel} is not the one the host sent")
        sources[rel] = data.decode("utf-8")
    return sources


def run_tests(sources: dict, result: Result) -> None:
    loader = unittest.TestLoader()
    names = sorted(os.path.basename(r)[:-3] for r in sources
                   if os.path.basename(r).startswith("test") and r.endswith(".py"))
    suite = unittest.TestSuite()
    for name in names:
        try:
            suite.addTests(loader.loadTestsFromModule(importlib.import_module(name)))
        except BaseException:   # an import that fails (or exits) fails the task, with the reason
            result.errors.append((f"import {name}", traceback.format_exc()))
    suite.run(result)


def main() -> None:
    spec = json.loads(sys.stdin.read())
    nonce = spec.pop("nonce")
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)   # the repo's prints go to stderr
    base = os.getcwd()
    hidden, repo = os.path.join(base, spec["hidden"]), os.path.join(base, spec["repo"])
    sources = read_verified(hidden, spec["tests"])
    stdlib = list(sys.path)
    sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder),
                         HiddenFinder(sources, hidden, stdlib))
    sys.path.append(repo)
    os.chdir(repo)   # tests that open repo files by relative path find them
    result = Result()
    before = snapshot()
    run_tests(sources, result)
    changed = tampered(before)
    for what, items in (("FAIL", result.failures), ("ERROR", result.errors)):
        for test, tb in items:
            sys.stderr.write(f"{what}: {test}\n{tb}\n")
    summary = {"run": result.testsRun, "passed": result.passed,
               "failed": [str(t) for t, _ in result.failures],
               "errors": [str(t) for t, _ in result.errors],
               "skipped": [str(t) for t, _ in result.skipped], "tampered": changed}
    out.write(f"{PREFIX} {nonce} {json.dumps(summary)}\n")
    out.flush()
    sys.exit(0 if result.wasSuccessful() and not changed else 1)


if __name__ == "__main__":
    main()
