"""The job registry: every loop describes itself once, as a ``Job`` — its config model, the roles
it places, its input checks, how it runs, its report and its benchmarks — and the CLI, the driver,
placement and the report look jobs up here by name. Nothing in ``services`` knows a loop.

Loops register through the ``evoray.jobs`` entry-point group (one line in ``pyproject.toml`` per
loop, loaded on first use); ``register_job`` adds one in-process (tests, notebooks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ENTRY_POINTS = "evoray.jobs"
DEFAULT_JOB = "srt"      # a config without a ``job:`` key


@dataclass(frozen=True)
class RunContext:
    """What a job's ``run`` gets: the validated config and the run's services."""
    cfg: Any
    store: Any                          # services.run_store.RunStore
    progress: Any                       # services.progress.StepProgress
    export: Callable[[dict], None]      # metrics → Ray's metrics export (the store has its own)
    placement: Any                      # services.placement.Placement, reserved
    resume: bool


@dataclass(frozen=True)
class Bench:
    help: str
    add_args: Callable                  # (argparse parser) → None
    run: Callable                       # (parsed args) → exit code


def no_check(cfg) -> None:
    return None


@dataclass(frozen=True)
class Job:
    name: str
    config: type                        # pydantic model whose ``job`` field is ``Literal[name]``
    roles: Callable[[Any], list]        # cfg → [services.placement.RoleSpec]
    run: Callable[[RunContext], None]
    check: Callable[[Any], None] = no_check      # raises ConfigError before Ray starts
    report: Optional[Callable[[Path, Sequence[Path]], Path]] = None   # (run dir, compared) → report.md
    benches: dict[str, Bench] = field(default_factory=dict)


_JOBS: dict[str, Job] = {}
_loaded = False


def register_job(job: Job) -> Job:
    _JOBS[job.name] = job
    return job


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINTS):
        job = ep.load()
        _JOBS.setdefault(job.name, job)


def lookup(name: str) -> Job | None:
    _load_entry_points()
    return _JOBS.get(name)


def job_names() -> list[str]:
    _load_entry_points()
    return sorted(_JOBS)


def all_jobs() -> list[Job]:
    _load_entry_points()
    return [_JOBS[n] for n in sorted(_JOBS)]
