"""Experiment trackers fed by the run store's metric stream: TensorBoard event files hold the very
scalars metrics.parquet holds, also after a resume redid steps; a tracker without its package
fails before Ray starts, naming the extra to install."""
from __future__ import annotations

import importlib.util

import pyarrow.parquet as pq
import pytest

from services.config import ConfigError
from services.run_store import RunStore
from services.tracking import TensorBoardSink, check_trackers
from tests.tfevents import read_scalars

pytest.importorskip("tensorboardX", reason="make test installs it (the [test] extra)")


def parquet_scalars(root):
    return {(r["step"], r["name"]): r["value"] for r in pq.read_table(root / "metrics.parquet").to_pylist()}


def test_tensorboard_holds_the_metrics_parquet_scalars(tmp_path):
    store = RunStore(tmp_path)
    store.sinks = [TensorBoardSink(tmp_path, "run", {})]
    for step in range(4):
        store.log(step, {"train/pseudo_reward": 0.25 * step, "heldout/maj@8": 1 / (step + 3), "skip": None})
    store.flush_metrics()
    tb = read_scalars(tmp_path / "tensorboard")
    assert tb.keys() == parquet_scalars(tmp_path).keys() and len(tb) == 8
    assert tb == pytest.approx(parquet_scalars(tmp_path))      # float32 in the event files
    store.close_sinks()


def test_a_resume_redoes_steps_in_tensorboard_too(tmp_path):
    store = RunStore(tmp_path)
    store.sinks = [TensorBoardSink(tmp_path, "run", {})]
    for step in range(5):
        store.log(step, {"loss": float(step)})
    store.flush_metrics()
    store.close_sinks()
    resumed = RunStore(tmp_path)                 # the checkpoint was at step 2: 3 and 4 are redone
    resumed.sinks = [TensorBoardSink(tmp_path, "run", {})]
    resumed.truncate_metrics(2)
    for step in (3, 4):
        resumed.log(step, {"loss": 10.0 + step})
    resumed.flush_metrics()
    resumed.close_sinks()
    assert read_scalars(tmp_path / "tensorboard") == parquet_scalars(tmp_path) == {
        (0, "loss"): 0.0, (1, "loss"): 1.0, (2, "loss"): 2.0, (3, "loss"): 13.0, (4, "loss"): 14.0}


@pytest.mark.parametrize("tracker, extra", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_missing_tracker_package_names_the_extra(tracker, extra):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    with pytest.raises(ConfigError, match=rf"tracking: {tracker} .*evoray\[{extra}\]"):
        check_trackers([tracker])


def test_missing_tracker_fails_the_cli_in_one_line(tmp_path):
    from tests.test_cli_errors import ROOT_CONFIG, assert_one_line_error, cli
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code, lines, seconds = cli("run", ROOT_CONFIG, "--set", "tracking=[wandb]", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, lines, seconds, "tracking: wandb", "evoray[wandb]")
    assert not (tmp_path / "r").exists()
