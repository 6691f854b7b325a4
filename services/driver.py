"""One run, start to end, on the Ray the config points at: open the run directory (local, shared
mount or URI), join or start Ray, reserve the job's roles, run it, record events. The job comes
from the registry: nothing here knows a loop."""
from __future__ import annotations

import shutil
from pathlib import Path

from services.config import ConfigError, dump_config


def open_store(run_dir: str, resume: bool):
    """The run's ``RunStore``; a URI run directory gets a local mirror (pulled when resuming)."""
    from services.run_store import RunStore
    from actors.storage import is_uri
    from services.storage import RunMirror, mirror_dir
    if not is_uri(run_dir):
        return RunStore(Path(run_dir))
    local = mirror_dir(run_dir)
    shutil.rmtree(local, ignore_errors=True)        # the URI is the truth; an old mirror is not
    mirror = RunMirror(local, run_dir)
    if not resume and mirror.exists():
        raise ConfigError(f"--run-dir {run_dir} is not empty; use `evoray resume {run_dir}` to continue it")
    if resume and not mirror.pull():
        raise ConfigError(f"{run_dir} is not a run directory (nothing there)")
    return RunStore(local, run_dir)


def run_job(cfg, run_dir: str, resume: bool) -> str:
    from services.controller import local_resources, start_ray
    from services.metrics import RayMetrics
    from services.placement import Placement, alive_nodes
    from services.progress import StepProgress
    from services.registry import RunContext, lookup
    from services.run_state import read_events
    from services.tracking import open_trackers
    from services.storage import check_shared, ray_probe

    store = open_store(run_dir, resume)
    if not resume:
        store.write_config(dump_config(cfg))
    progress = StepProgress()
    progress.note(f"run directory: {store.location}")
    job = lookup(cfg.job)
    specs = job.roles(cfg)
    start_ray(cfg.ray, local_resources(specs))
    if not store.remote:
        check_shared(store.root.resolve(), alive_nodes(), ray_probe)
    metrics = RayMetrics(store.name, cfg.job)

    def on_event(kind: str, **fields) -> None:
        store.event(kind, **fields)
        metrics.event(kind)
        if kind == "actor_restarted":
            metrics.export({"ray/actor_restarts": float(metrics.counts[kind])})
            progress.note(f"[yellow]{fields.get('actor')} was lost ({fields.get('error')}); "
                          f"restarted, its work re-issued")

    store.sinks = open_trackers(cfg.tracking, store.root, store.name, cfg.model_dump(mode="json"))
    placement = Placement(store.name, specs, cfg.ray, on_event).reserve()
    try:
        job.run(RunContext(cfg, store, progress, metrics.export, placement, resume))
        if (read_events(store.root)[-1:] or [{}])[0].get("event") != "run_finished":
            store.event("run_finished")
    finally:
        store.flush_metrics()
        store.close_sinks()
        placement.release()
    return store.location
