"""jobs.dgm.bench_scheduler: `evoray bench dgm-scheduler` with tiny settings, end to end on local Ray."""
from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest

from jobs.dgm import bench_scheduler as bench_dgm


def test_durations_seeded_heavy_tailed_and_capped():
    d = bench_dgm.durations(2001, 0.5, 5.0, seed=3)
    assert d == bench_dgm.durations(2001, 0.5, 5.0, seed=3)
    assert statistics.median(d) == pytest.approx(0.5, rel=0.1)
    assert max(d) == 5.0 and min(d) > 0
    assert statistics.mean(d) > statistics.median(d)          # right-skewed
    assert bench_dgm.durations(10, 0.5, 5.0, seed=4) != bench_dgm.durations(10, 0.5, 5.0, seed=3)


def test_run_writes_json(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    parser = argparse.ArgumentParser()
    bench_dgm.add_args(parser)
    args = parser.parse_args(["--workers", "2", "--attempts", "8", "--median-s", "0.05",
                              "--timeout-s", "0.3", "--seed", "1", "--out", str(tmp_path)])
    try:
        assert bench_dgm.run(args) == 0
    finally:
        if started:
            ray.shutdown()
    result = json.loads((tmp_path / "dgm-scheduler.json").read_text())
    assert result["benchmark"] == "dgm-scheduler"
    assert result["config"] == {"workers": 2, "attempts": 8, "attempts_per_generation": 2,
                                "median_s": 0.05, "timeout_s": 0.3, "sigma": 1.0, "seed": 1}
    assert result["durations"] == bench_dgm.durations(8, 0.05, 0.3, 1)
    for mode in ("async", "generation"):
        s = result["modes"][mode]
        assert s["mode"] == mode and s["workers"] == 2 and len(s["timings"]) == 8
        assert sorted(t["attempt"] for t in s["timings"]) == list(range(8))
        assert 0 < s["utilisation"] <= 1
        assert s["makespan_s"] >= result["lower_bound_makespan_s"] * 0.95
        assert s["attempts_per_min"] == pytest.approx(60 * 8 / s["makespan_s"])
        # each attempt slept (at least) its own duration in both modes
        for t in s["timings"]:
            assert t["end"] - t["start"] >= result["durations"][t["attempt"]] - 1e-3
    assert math.isfinite(result["speedup_async_vs_generation"])
    out = capsys.readouterr().out
    assert "utilisation %" in out and "attempts/min" in out
    assert "async" in out and "generation" in out and "dgm-scheduler.json" in out
