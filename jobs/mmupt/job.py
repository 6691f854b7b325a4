"""MM-UPT as a registered job: SRT's roles and driver, on image questions, with synthesis."""
from __future__ import annotations

from jobs.mmupt.config import MMUPTConfig
from jobs.srt.job import drive, srt_roles
from services.registry import Job, RunContext


def check_mmupt(cfg) -> None:
    from jobs.mmupt.loop import build_image_splits
    from services.inputs import check_model
    check_model(cfg.model.name)
    build_image_splits(cfg)


def run_mmupt(ctx: RunContext) -> None:
    from jobs.mmupt.loop import MMUPTLoop
    drive(ctx, MMUPTLoop)


def report_mmupt(run_dir, compare):
    from jobs.mmupt.report import write_report
    return write_report(run_dir, compare)


JOB = Job("mmupt", MMUPTConfig, srt_roles, run_mmupt, check_mmupt, report_mmupt)
