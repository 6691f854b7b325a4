"""Run-to-completion training on the cluster's workers with Ray Train: a ``TorchTrainer`` built from
a config's ``RayTrainConfig`` section (workers, CPUs/GPU per worker, retries, checkpoints kept),
run to its end, its last checkpoint read back on the driver.

Each run is a Ray Train run named ``NAME`` under ``RUN_DIR/ray_train`` (the run directory's URI
when it has one: every worker must reach it), where ``ray.train.report`` persists the
checkpoints. A worker that fails restarts the whole worker group, up to ``max_failures`` times,
and the worker function resumes from ``ray.train.get_checkpoint()``. The step-driven RL learner is
not this: it stays a group of actors the driver steps (``actors/learner.py``).
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class TrainRun:
    name: str
    metrics: dict[str, Any]
    checkpoint: Any                 # ray.train.Checkpoint of the last report that carried one
    seconds: float


def storage_path(store) -> str:
    """Where a run's Ray Train runs keep their checkpoints: ``RUN_DIR/ray_train``."""
    if store.remote:
        return f"{store.remote.uri}/ray_train"
    return os.path.abspath(store.root / "ray_train")


def scaling(section):
    """``ScalingConfig`` of a ``RayTrainConfig`` section: per worker its CPUs, a GPU when
    ``use_gpu``, its custom resources."""
    from ray.train import ScalingConfig
    per_worker = {"CPU": float(section.num_cpus), **{k: float(v) for k, v in section.resources.items()}}
    if section.use_gpu:
        per_worker["GPU"] = 1.0
    return ScalingConfig(num_workers=section.workers, use_gpu=section.use_gpu, resources_per_worker=per_worker)


def build_trainer(fn: Callable[[dict], None], config: dict, section, storage: str, name: str):
    """A ``TorchTrainer`` running ``fn(config)`` on ``section.workers`` workers (DDP over gloo on
    CPUs, NCCL on GPUs)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    run = RunConfig(name=name, storage_path=storage,
                    failure_config=FailureConfig(max_failures=section.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=section.keep_checkpoints))
    return TorchTrainer(fn, train_loop_config=config, scaling_config=scaling(section), run_config=run,
                        torch_config=TorchConfig(backend="nccl" if section.use_gpu else "gloo"))


def fit(fn: Callable[[dict], None], config: dict, section, storage: str, kind: str) -> TrainRun:
    """Run ``fn`` to completion as a new Ray Train run ``KIND-TIME-ID``; its last checkpoint.
    A run that fails after its retries raises ``RuntimeError`` naming the run and the cause."""
    from ray.train import TrainingFailedError
    name = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    try:
        result = fit_off_the_main_thread(build_trainer(fn, config, section, storage, name))
    except TrainingFailedError as e:
        cause = " ".join(str(e).split())[:600]
        raise RuntimeError(f"Ray Train run {name} ({kind}) failed after "
                           f"train.max_failures={section.max_failures} retries: {cause}") from None
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} ({kind}) ended without reporting a checkpoint")
    return TrainRun(name, dict(result.metrics or {}), result.checkpoint, time.perf_counter() - start)


def fit_off_the_main_thread(trainer):
    """``trainer.fit()`` in a daemon thread, its result or error here.

    On the main thread ``fit`` installs a SIGINT handler of its own that aborts the Ray Train run
    and stays installed after it returns, so Ctrl-C would no longer stop the evoray run around it
    (measured: a UI-Genie run went on exploring). Off the main thread it installs none; Ctrl-C
    raises here, the run stops as everywhere else, and the Ray Train controller and workers,
    owned by this driver, go with it."""
    import threading
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = trainer.fit()
        except BaseException as e:          # handed to the caller, on its thread
            out["error"] = e
    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)            # a bounded wait: signals reach the main thread
    if "error" in out:
        raise out["error"]
    return out["result"]


def checkpoint_files(checkpoint) -> dict[str, bytes]:
    """A (small) checkpoint's files by name, read on the driver from wherever it is stored."""
    with checkpoint.as_directory() as d:
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


def copy_checkpoint(checkpoint, dest: Path) -> None:
    """A checkpoint's files into the local directory ``dest``."""
    with checkpoint.as_directory() as d:
        shutil.copytree(d, dest, dirs_exist_ok=True)


def remove_run(storage: str, name: str) -> None:
    """Delete a finished run's directory (its checkpoints have been read and copied)."""
    from actors.storage import filesystem_of, is_uri
    if not is_uri(storage):
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
        return
    filesystem, path = filesystem_of(f"{storage}/{name}")
    try:
        filesystem.delete_dir(path)
    except FileNotFoundError:
        pass
