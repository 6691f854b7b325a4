"""jobs.dgm.bench_sandbox: `evoray bench sandbox` on a few problems, end to end."""
from __future__ import annotations

import argparse
import json

import pytest

from jobs.dgm import bench_sandbox


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_sandbox.add_args(parser)
    parser.add_argument("--out")   # the CLI adds it for every benchmark
    return parser.parse_args(["--tasks", "6", "--fresh-tasks", "2", "--out", str(tmp_path),
                              *extra])


def test_run_writes_json(tmp_path, capsys):
    from actors.sandbox import docker_available
    modes = ["humaneval", "bwrap"]
    if docker_available() is None:
        modes += ["docker-fresh", "docker-pool"]
    args = _args(tmp_path, "--broken", "--modes", ",".join(modes))
    assert bench_sandbox.run(args) == 0
    result = json.loads((tmp_path / "sandbox.json").read_text())
    assert result["benchmark"] == "sandbox" and result["skipped"] == {}
    assert result["config"] == {"workers": 2, "tasks": 6, "fresh_tasks": 2, "broken": True,
                                "timeout": 10.0}
    assert result["task_ids"] == [f"HumanEval/{i // 2}" for i in range(12)]
    assert set(result["modes"]) == set(modes)
    for mode, m in result["modes"].items():
        n = 4 if mode == "docker-fresh" else 12
        assert m["items"] == n and m["passed"] == n // 2       # canonical pass, broken fail
        assert m["verdicts"] == [True, False] * (n // 2)
        assert m["agree_with_humaneval"] == n
        assert m["seconds"] > 0 and m["items_per_s"] == pytest.approx(n / m["seconds"])
    out = capsys.readouterr().out
    assert "items/s" in out and "sandbox.json" in out and "bwrap" in out


def test_unavailable_docker_is_skipped_with_reason(tmp_path, monkeypatch, capsys):
    import actors.sandbox
    monkeypatch.setattr(actors.sandbox, "docker_available", lambda: "no engine here (test)")
    args = _args(tmp_path, "--tasks", "2", "--modes", "humaneval,docker-pool")
    assert bench_sandbox.run(args) == 0
    result = json.loads((tmp_path / "sandbox.json").read_text())
    assert list(result["modes"]) == ["humaneval"]
    assert result["skipped"] == {"docker-pool": "no engine here (test)"}
    assert "skipping docker-pool: no engine here (test)" in capsys.readouterr().out


def test_unknown_mode():
    with pytest.raises(SystemExit, match="unknown mode"):
        bench_sandbox.choose_modes("humaneval,podman")
