"""Learner → samplers by broadcast in buckets (gloo here; NCCL on GPUs): the bucket plan by hand,
and real actors: the samplers end with the learner's weights, also after one of them was killed."""
from __future__ import annotations

import pytest
import ray
import torch

from actors.learner import Learner, LearnerSettings, Sample
from actors.sampler import Sampler, SamplerSettings
from actors.weights.layout import bucket_size, plan_buckets, weight_spec
from services.config import ConfigError, parse_config
from actors.weights.sync import WeightSync


def test_bucket_plan_by_hand():
    spec = [("a", "float32", (3,)), ("b", "float32", (5,)), ("c", "bfloat16", (40,)), ("d", "float32", (2,))]
    # a: bytes 0-12; b starts at the next multiple of 16: 16-36 ≤ 40; c (80 B) overflows: a bucket of
    # its own, bigger than 40; d starts a new one
    plan = plan_buckets(spec, 40)
    assert plan == [[(0, 0), (1, 16)], [(2, 0)], [(3, 0)]]
    assert [bucket_size(spec, b) for b in plan] == [36, 80, 8]
    assert plan_buckets(spec, 10**6) == [[(0, 0), (1, 16), (2, 48), (3, 128)]]
    assert weight_spec([("w", torch.zeros(2, 3))], torch.bfloat16) == [("w", "bfloat16", (2, 3))]


def sampler_state(sampler) -> dict[str, torch.Tensor]:
    return ray.get(sampler.__ray_call__.remote(
        lambda self: {k: v.clone() for k, v in self.backend.model.named_parameters()}))


def learner_state(learner) -> dict[str, torch.Tensor]:
    return ray.get(learner.__ray_call__.remote(
        lambda self: {k: v.detach().clone() for k, v in self.model.named_parameters()}))


@pytest.mark.parametrize("sync_dtype", [None, "bfloat16"])
def test_samplers_get_the_learners_weights_and_survive_a_lost_sampler(tiny_lm, ray_local, sync_dtype):
    learner = ray.remote(Learner).options(num_cpus=0.25).remote(
        LearnerSettings(tiny_lm, lr=1e-2, threads=1, sync_dtype=sync_dtype))
    samplers = [ray.remote(Sampler).options(num_cpus=0.25, max_restarts=1, max_task_retries=0).remote(
        SamplerSettings(tiny_lm, threads=1)) for _ in range(2)]
    events = []
    sync = WeightSync(learner, samplers, on_event=lambda kind, **f: events.append((kind, f.get("actor"))),
                      transport="broadcast", bucket_mb=0.004, restart_timeout_s=60)   # 4 KB buckets: many
    ray.get(learner.train_step.remote([Sample([3, 4, 5], [6, 7, 1], 1.0), Sample([3, 4, 5], [8, 1], -1.0)]))
    stats = sync.sync()
    assert stats["sync/version"] == 1.0 and ray.get([s.policy_version.remote() for s in samplers]) == [1, 1]
    cast = (lambda t: t.to(torch.bfloat16).float()) if sync_dtype else (lambda t: t)
    want = {k: cast(v) for k, v in learner_state(learner).items()}
    for s in samplers:
        got = sampler_state(s)
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    assert stats["sync/mb"] * 1e6 == sum(v.numel() * (2 if sync_dtype else 4) for v in want.values())

    ray.kill(samplers[1], no_restart=False)          # lost: restarted with the checkpoint's weights
    ray.get(learner.train_step.remote([Sample([3, 4], [9, 1], 1.0), Sample([3, 4], [5, 1], -1.0)]))
    stats = sync.sync()
    assert stats["sync/version"] == 2.0 and ("weight_group_reformed", None) in events
    # no call saw the restart (the sampler died between syncs): the sync reports it, once
    assert [e for e in events if e[0] == "actor_restarted"] == [("actor_restarted", "sampler-1")]
    want = {k: cast(v) for k, v in learner_state(learner).items()}
    for s in samplers:
        got = sampler_state(s)
        assert all(torch.equal(got[k], want[k]) for k in want)
    for actor in [learner, *samplers]:
        ray.kill(actor)


def test_broadcast_between_processes_on_one_gpu_is_refused():
    with pytest.raises(ConfigError, match="weight_sync: broadcast cannot run between two processes on one GPU"):
        parse_config({"job": "srt", "learner": {"weight_sync": "broadcast", "num_gpus": 0.5},
                      "sampler": {"num_gpus": 0.5}, "ray": {"placement": "colocated"}})
