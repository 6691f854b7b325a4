"""Experiment trackers (``tracking: [tensorboard, wandb, mlflow]``), fed by ``RunStore.log`` with the
very values that go to ``metrics.parquet``: one metric stream, several sinks.

Each works with no network: TensorBoard writes event files under RUN_DIR/tensorboard; W&B runs
offline (``WANDB_MODE=offline`` unless the user set a mode) with its files under RUN_DIR/wandb;
MLflow writes a local file store at RUN_DIR/mlruns unless ``MLFLOW_TRACKING_URI`` names a server.
A resumed run redoes the steps after its checkpoint; ``truncate`` lets a sink drop them too."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from services.config import ConfigError

# tracker → (module that must import, the pip extra that installs it)
NEEDS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb"),
         "mlflow": ("mlflow", "mlflow")}


def check_trackers(names: list[str]) -> None:
    """Before Ray starts: every tracker asked for has its package."""
    for name in names:
        module, extra = NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking: {name} needs the package {module}: "
                              f"pip install 'evoray[{extra}]' (or {module})")


class TensorBoardSink:
    """Event files written in this thread (tensorboardX's ``EventsWriter``), so a flush means the
    records are on disk, under the metric names metrics.parquet uses (no tag rewriting)."""

    def __init__(self, root: Path, run_name: str, config: dict):
        self.logdir = root / "tensorboard"
        self.writer = None
        self.open(None)

    def open(self, purge_step: int | None) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        self.logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a directory's files in name order: the suffix keeps a resume's file last
        n = len(list(self.logdir.glob("events.out.tfevents.*")))
        self.writer = EventsWriter(str(self.logdir / "events"), filename_suffix=f".{n:04d}")
        if purge_step is not None:   # TensorBoard hides what earlier files hold from this step on
            self.writer.write_event(Event(wall_time=time.time(), step=purge_step,
                                          session_log=SessionLog(status=SessionLog.START)))

    def log(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        summary = Summary(value=[Summary.Value(tag=name, simple_value=value) for name, value in values.items()])
        self.writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self.writer.flush()

    def truncate(self, after_step: int) -> None:
        self.writer.close()
        self.open(after_step + 1)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, root: Path, run_name: str, config: dict):
        import wandb
        os.environ.setdefault("WANDB_MODE", "offline")
        # the run directory's name is the W&B id, so a resume appends to the same run
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "evoray"), name=run_name,
                              id=run_name, resume="allow", dir=str(root), config=config)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def flush(self) -> None:
        return None

    def truncate(self, after_step: int) -> None:
        return None          # W&B keeps its steps increasing: the redone steps are dropped by it

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, root: Path, run_name: str, config: dict):
        import mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:         # a file store needs no server; MLflow 3 asks to be told that is intended
            uri = (root / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "evoray")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        runs = self.client.search_runs([experiment_id], f"tags.evoray_run = '{run_name}'", max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                                 tags={"evoray_run": run_name}).info.run_id
            for key, value in flatten(config).items():
                self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        # MLflow's names allow letters, digits, _ - . / and space: "heldout/maj@8" → "heldout/maj_at_8"
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("@", "_at_"), v, now, step)
                                                    for k, v in values.items()])

    def flush(self) -> None:
        return None

    def truncate(self, after_step: int) -> None:
        return None

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def open_trackers(names: list[str], root: Path, run_name: str, config: dict) -> list:
    check_trackers(names)
    return [SINKS[name](root, run_name, config) for name in names]
