"""Start a UI-Genie run's actors — the agent's sampler, the reward model, the device pool — and
drive the loop; the agent's SFT and the reward model's head train as Ray Train runs
(``jobs/uigenie/training.py``)."""
from __future__ import annotations

from dataclasses import dataclass

from jobs.uigenie.config import UIGenieConfig
from services.bench import lazy
from services.registry import Bench, Job, RunContext


@dataclass
class UIGenieActors:
    sampler: object
    rm: object
    pool: object
    device_size: tuple[int, int]
    training: object = None           # jobs.uigenie.training.Training: SFT and the RM head on Ray Train


def start_actors(cfg, placement) -> UIGenieActors:
    import ray

    from actors.emulator.factory import DeviceSpec
    from actors.emulator.pool import create_pool
    from actors.reward_model import RewardModel, RewardModelSettings
    from actors.sampler import Sampler
    from services.controller import sampler_settings
    from jobs.uigenie.policy import SYSTEM_PROMPT
    s, rmc, d = cfg.sampler, cfg.reward_model, cfg.devices
    settings = sampler_settings(s, cfg.model.name)
    settings.system_prompt = s.system_prompt or SYSTEM_PROMPT
    name = placement.actor_name
    sampler = ray.remote(Sampler).options(**placement.options("sampler", name=name("sampler"))).remote(settings)
    rm = ray.remote(RewardModel).options(**placement.options("reward-model", name=name("reward-model"))).remote(
        RewardModelSettings(model=rmc.model or cfg.model.name, head_hidden=rmc.head_hidden, lr=rmc.lr,
                            epochs=rmc.epochs, batch_size=rmc.batch_size, max_tokens=rmc.max_tokens,
                            max_screen_chars=rmc.max_screen_chars, threads=s.threads, seed=cfg.loop.seed))
    pool = create_pool(name("devices"), DeviceSpec(d.backend, dict(d.options)), d.size,
                       lease_ttl_s=d.lease_ttl_s, health_interval_s=d.health_interval_s,
                       max_failures=d.max_failures,
                       device_options={"num_cpus": d.num_cpus, "resources": dict(d.resources)})
    for role, actor in (("sampler", sampler), ("reward-model", rm)):
        placement.wait_ready(role, [actor.ready.remote()])
    return UIGenieActors(sampler, rm, pool, (0, 0))


def run_uigenie(ctx: RunContext) -> None:
    import ray

    from actors.emulator.lease import run_with_device
    from actors.emulator.simulated import reference_actions, seed_suite, setup, task_suite
    from jobs.uigenie.loop import UIGenieLoop
    from jobs.uigenie.rollout import DeviceRunner, EpisodeOps
    from jobs.uigenie.training import Training
    from services.ray_train import storage_path
    cfg, store, progress, placement = ctx.cfg, ctx.store, ctx.progress, ctx.placement
    run_name = placement.run_name
    progress.note(f"starting the sampler, the reward model and {cfg.devices.size} {cfg.devices.backend} "
                  f"device(s); training runs on {cfg.train.workers} Ray Train worker(s) …")
    actors = start_actors(cfg, placement)
    actors.training = Training(cfg, storage_path(store), actors.sampler, actors.rm)
    placement.report(store, progress)
    ops = EpisodeOps(setup=setup, succeeded=lambda task, device: task.check(device.state),
                     reference=reference_actions)
    def on_device(op):                      # the op runs inside the device's actor
        return run_with_device(actors.pool, run_name, lambda dev: dev.run(op), retries=cfg.devices.retries)
    runner = DeviceRunner(on_device, cfg.devices.size)
    actors.device_size = runner.map([lambda dev: tuple(dev.size)])[0]
    try:
        seeds = seed_suite(tuple(cfg.tasks.seed_levels)) if cfg.tasks.seeds == "generated" else None
        UIGenieLoop(cfg, store, progress, ctx.export, actors, ops, runner, task_suite(), seeds).run(ctx.resume)
        progress.note(f"device pool: {ray.get(actors.pool.stats.remote())}")
    finally:
        ray.get(actors.pool.shutdown.remote())


def uigenie_roles(cfg) -> list:
    from services.placement import RoleSpec, role_spec
    d = cfg.devices
    return [role_spec("sampler", 1, cfg.sampler, grouped=True),
            RoleSpec("train-workers", cfg.train.workers, cfg.train.num_cpus, float(cfg.train.use_gpu),
                     resources=dict(cfg.train.resources)),
            RoleSpec("reward-model", 1, cfg.reward_model.num_cpus),
            RoleSpec("device-pool", 1, num_cpus=0),
            RoleSpec("devices", d.size, d.num_cpus, resources=dict(d.resources))]


def check_uigenie(cfg) -> None:
    from actors.emulator.factory import check_backend
    from services.inputs import check_model
    check_model(cfg.model.name)
    if cfg.reward_model.model:
        check_model(cfg.reward_model.model, "reward_model.model")
    check_backend(cfg.devices.backend)


def report_uigenie(run_dir, compare):
    """Success, RM F1 and dataset sizes by generation."""
    import pyarrow.parquet as pq

    from jobs.uigenie.report import write_uigenie_report
    from services.run_store import atomic_write_text
    metrics = run_dir / "metrics.parquet"
    if not metrics.is_file():
        raise ValueError(f"{metrics} does not exist: no generation finished yet")
    section = write_uigenie_report(run_dir, pq.read_table(metrics).to_pylist())
    report = run_dir / "report.md"
    atomic_write_text(report, f"# UI-Genie run {run_dir.name}\n\n{section}")
    return report


JOB = Job("uigenie", UIGenieConfig, uigenie_roles, run_uigenie, check_uigenie, report_uigenie, benches={
    "uigenie-sampling": Bench("the agent's sampling: one padded batch vs length-sorted batches (sampler.batch_tokens)",
                              lazy("jobs.uigenie.bench_sampling", "add_args"),
                              lazy("jobs.uigenie.bench_sampling", "run"))})
