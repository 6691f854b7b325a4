"""services.bench_sft: `evoray bench sft` on the tiny model (the timings are the bench's to report;
here: both ways run the same steps to the same loss, and the result is written)."""
from __future__ import annotations

import argparse
import json

import pytest

from services import bench_sft


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    bench_sft.add_args(parser)
    parser.add_argument("--out")
    return parser.parse_args(list(argv))


def test_both_ways_reach_the_same_loss_and_the_result_is_written(tmp_path, tiny_lm):
    args = parse("--model", tiny_lm, "--rows", "5", "--prompt-tokens", "4", "20", "--reply-tokens", "1", "4",
                 "--trainable-layers", "1", "--epochs", "2", "--out", str(tmp_path))
    assert bench_sft.run(args) == 0
    result = json.loads((tmp_path / "sft.json").read_text())
    full, kept = result["results"]
    assert (full["bottom"], kept["bottom"]) == ("full", "kept") and kept["frozen_layers"] == 1
    assert full["final_loss"] > 0 and result["final_loss_gap"] < 1e-4 * full["final_loss"]
    assert all(r["first_epoch_s_per_step"] > 0 and r["later_s_per_step"] > 0 for r in result["results"])


@pytest.mark.parametrize("argv, message", [(["--epochs", "1"], "at least 2"),
                                           (["--trainable-layers", "2"], "leaves no layer")])
def test_settings_that_measure_nothing_are_refused(tmp_path, tiny_lm, argv, message):
    with pytest.raises(ValueError, match=message):
        bench_sft.run(parse("--model", tiny_lm, "--rows", "2", "--out", str(tmp_path), *argv))
