"""jobs.uigenie.bench_sampling: `evoray bench uigenie-sampling` on a run directory holding a tiny model."""
from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.uigenie import bench_sampling


def fake_run(tmp_path, model: str):
    run = tmp_path / "run"
    (run / "datasets").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name: {model}\n")
    prompts = ["hello", "what is one plus two ?", "is the cat big or small ? think then answer", "hello hello"]
    pq.write_table(pa.Table.from_pylist([{"prompt": p, "completion": "x"} for p in prompts]),
                   run / "datasets" / "agent_gen0.parquet")
    return run


def test_run_times_every_budget_and_writes_json(tmp_path, tiny_lm):
    run = fake_run(tmp_path, tiny_lm)
    parser = argparse.ArgumentParser()
    bench_sampling.add_args(parser)
    parser.add_argument("--out")
    args = parser.parse_args(["--run-dir", str(run), "--prompts", "4", "--samples", "1", "2",
                              "--budgets", "0", "1", "--max-new-tokens", "3", "--out", str(tmp_path)])
    assert bench_sampling.run(args) == 0
    result = json.loads((tmp_path / "uigenie-sampling.json").read_text())
    assert result["agent"] == "base model"
    assert result["backend"] == "transformers"
    assert [(r["samples"], r["batch_tokens"]) for r in result["rows"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in result["rows"]:
        assert r["replies"] == 4 * r["samples"] and r["seconds"] > 0
        assert r["prompt_tokens_min"] < r["prompt_tokens_max"]


def test_a_run_without_seed_data_is_refused(tmp_path):
    parser = argparse.ArgumentParser()
    bench_sampling.add_args(parser)
    with pytest.raises(ValueError, match="agent_gen0.parquet does not exist"):
        bench_sampling.run(parser.parse_args(["--run-dir", str(tmp_path)]))
