"""Start a UI-Genie run's actors — the agent's sampler and learner, the reward model, the device
pool — and drive the loop."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from jobs.uigenie.config import UIGenieConfig
from services.registry import Job, RunContext


@dataclass
class UIGenieActors:
    sampler: object
    learner: object
    rm: object
    pool: object
    device_size: tuple[int, int]
    _encoded: dict = field(default_factory=dict)

    def sync(self) -> dict[str, float]:
        from actors.weights.sync import WeightSync
        return WeightSync(self.learner, [self.sampler]).sync()

    def sft(self, rows: list[dict], epochs: int, batch: int, rng: random.Random) -> dict[str, float]:
        """Supervised fine-tuning on (prompt, completion) rows: the learner's ``vanilla_pg`` loss
        with advantage 1 is exactly the token-mean negative log-likelihood. Then weights → sampler."""
        import ray

        from jobs.uigenie.policy import REPLY_PREFIX
        todo = [(r["prompt"], r["completion"]) for r in rows if (r["prompt"], r["completion"]) not in self._encoded]
        prompts = ray.get([self.sampler.encode.remote([{"role": "user", "content": p}], REPLY_PREFIX)
                           for p, _ in todo])
        replies = ray.get([self.sampler.encode_reply.remote(c) for _, c in todo])
        from actors.learner import Sample    # torch: not at import, so the CLI's checks stay fast
        self._encoded.update({key: Sample(p, t, 1.0) for key, p, t in zip(todo, prompts, replies)})
        samples = [self._encoded[(r["prompt"], r["completion"])] for r in rows]
        losses = sft_epochs(samples, epochs, batch, rng,
                            lambda b: ray.get(self.learner.train_step.remote(b)))
        sync = self.sync() if samples else {}
        return {"agent/sft_loss_first": losses[0] if losses else 0.0,
                "agent/sft_loss_last": losses[-1] if losses else 0.0,
                "agent/sft_steps": float(len(losses)), **sync}


def sft_epochs(samples: list[Sample], epochs: int, batch: int, rng: random.Random, train_step) -> list[float]:
    """``epochs`` shuffled passes, one optimizer step per ``batch`` samples; the step losses."""
    losses = []
    for _ in range(epochs):
        order = list(range(len(samples)))
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            losses.append(train_step([samples[j] for j in order[i:i + batch]]).get("loss", 0.0))
    return losses


def start_actors(cfg, placement) -> UIGenieActors:
    import ray

    from actors.emulator.factory import DeviceSpec
    from actors.emulator.pool import create_pool
    from actors.learner import Learner, LearnerSettings
    from actors.reward_model import RewardModel, RewardModelSettings
    from actors.sampler import Sampler
    from services.controller import sampler_settings
    from jobs.uigenie.policy import SYSTEM_PROMPT
    s, a, rmc, d = cfg.sampler, cfg.agent, cfg.reward_model, cfg.devices
    settings = sampler_settings(s, cfg.model.name)
    settings.system_prompt = s.system_prompt or SYSTEM_PROMPT
    name = placement.actor_name
    sampler = ray.remote(Sampler).options(**placement.options("sampler", name=name("sampler"))).remote(settings)
    learner = ray.remote(Learner).options(**placement.options("agent-learner", name=name("agent-learner"))).remote(
        LearnerSettings(model=cfg.model.name, lr=a.lr, grad_clip=a.grad_clip, policy_loss="vanilla_pg",
                        aggregation="token-mean", micro_batch_tokens=a.micro_batch_tokens,
                        threads=s.threads, seed=cfg.loop.seed, trainable_layers=a.trainable_layers))
    rm = ray.remote(RewardModel).options(**placement.options("reward-model", name=name("reward-model"))).remote(
        RewardModelSettings(model=rmc.model or cfg.model.name, head_hidden=rmc.head_hidden, lr=rmc.lr,
                            epochs=rmc.epochs, batch_size=rmc.batch_size, max_tokens=rmc.max_tokens,
                            max_screen_chars=rmc.max_screen_chars, threads=s.threads, seed=cfg.loop.seed))
    pool = create_pool(name("devices"), DeviceSpec(d.backend, dict(d.options)), d.size,
                       lease_ttl_s=d.lease_ttl_s, health_interval_s=d.health_interval_s,
                       max_failures=d.max_failures,
                       device_options={"num_cpus": d.num_cpus, "resources": dict(d.resources)})
    for role, actor in (("sampler", sampler), ("agent-learner", learner), ("reward-model", rm)):
        placement.wait_ready(role, [actor.ready.remote()])
    return UIGenieActors(sampler, learner, rm, pool, (0, 0))


def run_uigenie(ctx: RunContext) -> None:
    import ray

    from actors.emulator.lease import run_with_device
    from actors.emulator.simulated import reference_actions, seed_suite, setup, task_suite
    from jobs.uigenie.loop import UIGenieLoop
    from jobs.uigenie.rollout import DeviceRunner, EpisodeOps
    cfg, store, progress, placement = ctx.cfg, ctx.store, ctx.progress, ctx.placement
    run_name = placement.run_name
    progress.note(f"starting the sampler, the agent's learner, the reward model and "
                  f"{cfg.devices.size} {cfg.devices.backend} device(s) …")
    actors = start_actors(cfg, placement)
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
            RoleSpec("agent-learner", 1, cfg.agent.num_cpus),
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


JOB = Job("uigenie", UIGenieConfig, uigenie_roles, run_uigenie, check_uigenie, report_uigenie)
