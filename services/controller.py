"""The job controller's Ray side: start Ray, place the roles as named actors, fan work out to them,
and move weights from the learner to the samplers."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from actors.learner import Learner, LearnerSettings
from actors.sampler import Completion, Sampler, SamplerSettings, SamplingParams


def start_ray(address: str | None, num_cpus: int | None, include_dashboard: bool | None) -> None:
    import ray
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, log_to_driver=True)


@dataclass
class Roles:
    samplers: list
    learner: object

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Split the prompts over the samplers; results come back grouped by prompt, in order."""
        import ray
        k = len(self.samplers)
        chunks = [list(range(len(prompts)))[i::k] for i in range(k)]
        futures = [s.generate.remote([prompts[j] for j in chunk], params)
                   for s, chunk in zip(self.samplers, chunks) if chunk]
        by_prompt: dict[int, list[Completion]] = {}
        for chunk, result in zip([c for c in chunks if c], ray.get(futures)):
            for c in result:
                c.prompt_index = chunk[c.prompt_index]
                by_prompt.setdefault(c.prompt_index, []).append(c)
        return [c for i in range(len(prompts)) for c in by_prompt.get(i, [])]

    def sync_weights(self) -> dict[str, float]:
        """Learner → object store (once) → every sampler. Returns the version, MB and MB/s."""
        import ray
        start = time.perf_counter()
        nbytes, packed_ref = ray.get(self.learner.export_weights.remote())
        versions = ray.get([s.load_weights.remote(packed_ref) for s in self.samplers])
        seconds = time.perf_counter() - start
        return {"sync/version": float(versions[0]), "sync/mb": nbytes / 1e6,
                "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9) * len(self.samplers),
                "time/sync_s": seconds}


def sampler_settings(s, model: str) -> SamplerSettings:
    """``SamplerSettings`` from a config's ``sampler:`` section."""
    return SamplerSettings(
        model=model, backend=s.backend, dtype=s.dtype, threads=s.threads,
        device="cuda" if s.num_gpus > 0 else "cpu", system_prompt=s.system_prompt,
        tensor_parallel_size=s.tensor_parallel_size, gpu_memory_utilization=s.gpu_memory_utilization)


def start_roles(cfg, run_name: str) -> Roles:
    """Create the sampler and learner actors for ``cfg`` (an SRT-shaped config), named per run."""
    import ray
    s, lc = cfg.sampler, cfg.learner
    settings = sampler_settings(s, cfg.model.name)
    samplers = [ray.remote(Sampler).options(name=f"{run_name}:sampler-{i}", num_cpus=s.num_cpus,
                                            num_gpus=s.num_gpus).remote(settings)
                for i in range(s.num_actors)]
    learner_settings = LearnerSettings(
        model=cfg.model.name, lr=lc.lr, weight_decay=lc.weight_decay, betas=tuple(lc.betas),
        grad_clip=lc.grad_clip, policy_loss=lc.policy_loss, clip_low=lc.clip_low,
        clip_high=lc.clip_high, aggregation=lc.aggregation, kl_coef=lc.kl_coef,
        kl_estimator=lc.kl_estimator, micro_batch_tokens=lc.micro_batch_tokens, autocast=lc.autocast,
        threads=lc.threads, device="cuda" if lc.num_gpus > 0 else "cpu",
        sync_dtype=None if s.dtype == "float32" else s.dtype, seed=cfg.train.seed)
    learner = ray.remote(Learner).options(name=f"{run_name}:learner", num_cpus=lc.num_cpus,
                                          num_gpus=lc.num_gpus).remote(learner_settings)
    ray.get([a.ready.remote() for a in samplers + [learner]])
    return Roles(samplers, learner)
