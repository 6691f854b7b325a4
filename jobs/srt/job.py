"""SRT as a registered job: its roles (samplers, learner, optional answer graders), its input
checks, its run (start the roles, drive the loop, print the table), its report and benchmark."""
from __future__ import annotations

from jobs.srt.config import SRTConfig
from services.bench import lazy
from services.registry import Bench, Job, RunContext


def srt_roles(cfg) -> list:
    """The roles of an SRT-shaped config (MM-UPT's too)."""
    from services.placement import role_spec
    specs = [role_spec("sampler", cfg.sampler.num_actors, cfg.sampler, restartable=True, grouped=True),
             role_spec("learner", cfg.learner.workers, cfg.learner, grouped=True)]
    if cfg.sandbox.workers:
        specs.append(role_spec("sandbox", cfg.sandbox.workers, cfg.sandbox, restartable=True))
    return specs


def check_srt(cfg) -> None:
    from jobs.srt.splits import build_splits, describe_splits
    from services.inputs import check_model
    check_model(cfg.model.name)
    print(describe_splits(cfg, build_splits(cfg)), flush=True)


def drive(ctx: RunContext, loop_class) -> None:
    """Start the roles, run ``loop_class`` on them, print the held-out table."""
    from jobs.srt.report import demo_table
    from jobs.srt.roles import start_roles
    cfg, progress = ctx.cfg, ctx.progress
    progress.note(f"starting {cfg.sampler.num_actors} sampler(s), a learner"
                  + (f" and {cfg.sandbox.workers} sandbox grader(s)" if cfg.sandbox.workers else "")
                  + f" for {cfg.model.name} …")
    roles = start_roles(cfg, ctx.placement)
    ctx.placement.report(ctx.store, progress)
    loop_class(cfg, roles, ctx.store, progress, ctx.export).run(resume=ctx.resume)
    try:
        progress.console.print(demo_table(ctx.store.root))
    except ValueError as e:
        progress.note(f"(no table: {e})")


def run_srt(ctx: RunContext) -> None:
    from jobs.srt.loop import SRTLoop
    drive(ctx, SRTLoop)


def report_srt(run_dir, compare):
    from jobs.srt.report import write_report
    return write_report(run_dir, compare)


JOB = Job("srt", SRTConfig, srt_roles, run_srt, check_srt, report_srt, benches={
    "grpo-step": Bench("one GRPO step split into generation/reward/training/sync, vs TRL and the roofline",
                       lazy("jobs.srt.bench_grpo", "add_args"), lazy("jobs.srt.bench_grpo", "run"))})
