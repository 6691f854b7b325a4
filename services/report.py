"""``evoray report RUN_DIR [--compare OTHER_RUN_DIR ...]``: the run's job (``config.yaml``'s
``job:``) writes its plots and ``report.md`` into the run directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

from services.registry import DEFAULT_JOB, lookup


def run_job_name(run_dir: Path) -> str:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return DEFAULT_JOB       # a directory of metrics alone: the default job's report reads it
    raw = yaml.safe_load(config.read_text()) or {}
    return raw.get("job", DEFAULT_JOB) if isinstance(raw, dict) else DEFAULT_JOB


def write_report(run_dir: str | os.PathLike, compare: Sequence[str | os.PathLike] = ()) -> Path:
    run_dir = Path(run_dir)
    name = run_job_name(run_dir)
    job = lookup(name)
    if job is None or job.report is None:
        raise ValueError(f"{run_dir / 'config.yaml'}: job {name!r} has no report")
    return job.report(run_dir, [Path(p) for p in compare])
