"""The data-parallel learner: two Learner actors joined in a gloo group (real Ray, real
torch.distributed) take the same step as one Learner on the whole batch."""
from __future__ import annotations

from typing import Optional

import pytest
import ray
import torch

from actors.learner import Learner, LearnerSettings, Sample
from actors.weights.pack import unpack_views
from services.config import ConfigError, parse_config


def batch(prompts) -> list[Sample]:
    """Three prompt groups of different sizes and lengths, sampler log-probs for the TIS weights."""
    p0, p1, p2 = prompts
    rows = [(p0, [40, 41, 1], 1.0), (p0, [33, 34, 35, 36, 37], -1.0), (p0, [50], 1.0),
            (p1, [40, 20, 21, 22, 1], 1.0), (p1, [60, 61], -1.0),
            (p2, [5, 6, 7, 8, 9, 10, 11], -0.5), (p2, [12], 0.5)]
    return [Sample(p, ids, a, [-3.0 - 0.1 * k for k in range(len(ids))]) for p, ids, a in rows]


@pytest.fixture(scope="module")
def prompts(tiny_lm):
    from actors.model_loading import load_causal_lm
    _, tok = load_causal_lm(tiny_lm)
    texts = ["what is one plus two ?", "hello", "is the cat big or small ? think then answer"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False) for t in texts]


def settings(tiny_lm, **kw) -> LearnerSettings:
    return LearnerSettings(**{"model": tiny_lm, "lr": 1e-2, "threads": 1, "tis_cap": 2.0, **kw})


def weights(exported) -> dict[str, torch.Tensor]:
    """``export_weights()``'s packed weights ([ref] inside Ray) as tensors by name."""
    _, packed = exported
    packed = ray.get(packed[0]) if isinstance(packed, list) else packed
    return {k: v.clone() for k, v in unpack_views(packed)}


def start_ranks(tiny_lm, n=2, **kw) -> list:
    ranks = [ray.remote(Learner).options(num_cpus=0.5).remote(settings(tiny_lm, **kw)) for _ in range(n)]
    address = ray.get(ranks[0].rendezvous.remote())
    assert ray.get([r.join.remote(i, n, address, ranks[1:] if i == 0 else [])
                    for i, r in enumerate(ranks)]) == list(range(n))
    return ranks


LAYOUTS = {"ddp": {}, "fsdp2": {"strategy": "fsdp2"},
           "zero1": {"strategy": "deepspeed", "zero_stage": 1}, "zero2": {"strategy": "deepspeed", "zero_stage": 2}, "zero3": {"strategy": "deepspeed", "zero_stage": 3}}


def assert_weights_match(ranks, want: dict, atol: float, grads: Optional[dict] = None, lr: float = 0.0) -> None:
    """The group's weights (exported by rank 0, gathering any shards) equal ``want``. With the
    single process's first-step ``grads``: Adam's first step is lr·g/(|g| + 1e-8), so where
    |g| < 1e-6 float order alone moves it anywhere in [-lr, lr]; there only |Δ| ≤ 2·lr holds."""
    got = weights(ray.get(ranks[0].export_weights.remote()))
    for name, value in want.items():
        if grads is None or name not in grads:
            torch.testing.assert_close(got[name], value, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
            continue
        bound = torch.where(grads[name].abs() < 1e-6, 2 * lr, atol)
        excess = (got[name] - value).abs() - bound
        assert (excess <= 0).all(), f"{name}: {int((excess > 0).sum())} elements off by up to {excess.max():.2e} more than allowed"


@pytest.mark.parametrize("layout, extra", [
    ("ddp", {}), ("ddp", {"aggregation": "seq-mean-token-mean"}),
    # one micro-batch per prompt group: the ranks run 2 and 1, so lockstep needs a placeholder
    ("fsdp2", {"micro_batch_tokens": 1}), ("fsdp2", {"aggregation": "seq-mean-token-mean", "kl_coef": 0.1}),
    ("fsdp2", {"micro_batch_tokens": 1, "gradient_checkpointing": True}),
    # DeepSpeed: ZeRO-1 is checked on image prompts below, placeholders by the PPO cases
    ("zero3", {"aggregation": "seq-mean-token-mean", "kl_coef": 0.1, "gradient_checkpointing": True}),
    # PPO: 2 epochs × 2 mini-batches (groups p0+p1, then p2 alone: one rank has nothing, so a
    # lockstep strategy runs placeholders in the π_old pass and in every step); every rank takes 4 steps
    ("ddp", {"ppo_epochs": 2, "mini_batches": 2}),
    ("fsdp2", {"ppo_epochs": 2, "mini_batches": 2, "clip_low": 0.001, "clip_high": 0.001}),
    ("zero2", {"ppo_epochs": 2, "mini_batches": 2}), ("zero3", {"ppo_epochs": 2, "mini_batches": 2}),
    # LoRA: only the adapters have gradients; the export gathers and merges them
    ("ddp", {"lora": {"rank": 4, "target_modules": ["q_proj", "v_proj"]}}),
    ("fsdp2", {"lora": {"rank": 4}})])
def test_two_ranks_take_the_single_process_step(tiny_lm, prompts, ray_local, layout, extra):
    samples = batch(prompts)
    single = Learner(settings(tiny_lm, **extra))
    expected = single.train_step(samples)
    ranks = start_ranks(tiny_lm, **LAYOUTS[layout], **extra)
    got = ray.get(ranks[0].train_step.remote(samples))
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert got["kl"] == pytest.approx(expected["kl"], abs=1e-6)
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert got["sampler_logprob_gap"] == pytest.approx(expected["sampler_logprob_gap"], abs=1e-5)
    assert got["is_weights"] == pytest.approx(expected["is_weights"], abs=1e-6)   # back in input order
    for key in ("clip_fraction", "approx_kl", "ratio_mean", "ratio_max", "ratio_min", "updates"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7), key
    def whole_grads(learner) -> dict[str, torch.Tensor]:
        """Each parameter's whole gradient (sharded ones gathered: every rank at once)."""
        from actors.data_parallel import gathered
        return {k: gathered(p.grad).clone() for k, p in learner.model.named_parameters() if p.grad is not None}

    # every rank holds the whole batch's (clipped) gradient, summed across ranks (or its shard of it) …
    # (DeepSpeed keeps its gradients in ZeRO's partitions and frees them in the step: the weights
    # and the gradient norm above check them there)
    want_grads = whole_grads(single) if LAYOUTS[layout].get("strategy") != "deepspeed" else {}
    if layout == "zero3":                 # each rank holds a partition of every parameter
        held, whole = ray.get(ranks[1].__ray_call__.remote(lambda learner: (
            sum(p.ds_tensor.numel() for p in learner.model.parameters()),
            sum(p.ds_numel for p in learner.model.parameters()))))
        assert 0 < held < whole
    # after earlier steps (PPO) the float-order differences of each step carry into the next
    atol = 1e-7 if expected["updates"] == 1 else 2e-6
    for mine in ray.get([rank.__ray_call__.remote(whole_grads) for rank in ranks]):
        for name, value in want_grads.items():
            torch.testing.assert_close(mine[name], value, atol=atol, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    # … and so the same new weights (Adam's first step is ±lr wherever |g| ≫ eps; float sums in
    # another order may flip that for a gradient of ~1e-8, hence the tolerance). Exported from
    # rank 0; each rank's own copy (replicated) or shard (fsdp) is what that export gathers.
    assert_weights_match(ranks, weights(single.export_weights()), atol=2e-4 if expected["updates"] == 1 else 1e-3)
    for r in ranks:
        ray.kill(r)


def test_fully_sharded_rank_without_samples_runs_placeholders(tiny_lm, prompts, ray_local):
    """One prompt group for two ranks: rank 1 has nothing, runs a placeholder micro-batch so the
    collectives pair up, and adds nothing to the gradient."""
    samples = batch(prompts)[:3]
    single = Learner(settings(tiny_lm))
    expected = single.train_step(samples)
    ranks = start_ranks(tiny_lm, strategy="fsdp2")
    got = ray.get(ranks[0].train_step.remote(samples))
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert_weights_match(ranks, weights(single.export_weights()), atol=2e-4)
    for r in ranks:
        ray.kill(r)


@pytest.mark.parametrize("layout", ["fsdp2", "zero2", "zero3"])
def test_sharded_checkpoint_resumes_the_same_run(tiny_lm, prompts, ray_local, tmp_path, layout):
    """Rank 0 gathers the sharded state into a single-process checkpoint; every rank of a new group
    takes its share back, and the next step equals the single process's second step — as does a
    single process resuming from the same checkpoint, and the group resuming from the single
    process's checkpoint (the files are the same under every strategy)."""
    samples = batch(prompts)
    single = Learner(settings(tiny_lm))
    single.train_step(samples)
    single.save(str(tmp_path / "single"))
    single.train_step(samples)
    want = weights(single.export_weights())
    ranks = start_ranks(tiny_lm, **LAYOUTS[layout])
    ray.get(ranks[0].train_step.remote(samples))
    ray.get(ranks[0].save.remote(str(tmp_path / "ckpt")))
    for r in ranks:
        ray.kill(r)
    fresh = start_ranks(tiny_lm, **LAYOUTS[layout])
    for source in ("ckpt", "single"):
        assert ray.get(fresh[0].load.remote(str(tmp_path / source))) == 1
        ray.get(fresh[0].train_step.remote(samples))
        assert_weights_match(fresh, want, atol=4e-4)
    for r in fresh:
        ray.kill(r)
    alone = Learner(settings(tiny_lm))
    assert alone.load(str(tmp_path / "ckpt")) == 1
    alone.train_step(samples)
    for name, value in weights(alone.export_weights()).items():
        torch.testing.assert_close(value, want[name], atol=4e-4, rtol=0, msg=lambda m: f"{name}: {m}")


def test_shards_are_whole_groups_balanced_by_tokens(tiny_lm, prompts):
    learner = Learner(settings(tiny_lm))
    samples = batch(prompts)
    learner.world_size = 2
    shards = learner.shards(samples)
    assert sorted(i for s in shards for i in s) == list(range(len(samples)))
    group_of = {i: tuple(samples[i].prompt_ids) for i in range(len(samples))}
    for a, b in [(0, 1)]:
        assert not {group_of[i] for i in shards[a]} & {group_of[i] for i in shards[b]}
    # groups by size: p0 3 × ~12 tokens, p2 2 × ~23, p1 2 × ~7: the largest first, each to the emptier rank
    sizes = [sum(len(samples[i].prompt_ids) + len(samples[i].token_ids) for i in s) for s in shards]
    assert max(sizes) - min(sizes) <= max(len(s.prompt_ids) + len(s.token_ids) for s in samples) * 3
    learner.world_size = 4                         # more ranks than groups: one rank gets nothing
    assert sorted(len(s) == 0 for s in learner.shards(samples)) == [False, False, False, True]


def test_colocated_placement_takes_one_learner():
    with pytest.raises(ConfigError, match="learner.workers > 1 needs placement: disaggregated"):
        parse_config({"job": "srt", "learner": {"workers": 2}, "ray": {"placement": "colocated"}})


@pytest.mark.parametrize("learner, message", [
    ({"workers": 2, "shard_weights": True}, "learner.shard_weights was replaced by learner.strategy: fsdp2"),
    ({"workers": 2, "shard_optimizer": True}, "learner.shard_optimizer was replaced by learner.strategy: deepspeed"),
    ({"workers": 2, "zero_stage": 3}, "learner.zero_stage is DeepSpeed's; learner.strategy is ddp"),
    ({"strategy": "fsdp2"}, "learner.strategy: fsdp2 shards across ranks and needs learner.workers > 1"),
    ({"workers": 2, "strategy": "deepspeed", "lora": {}}, "learner.lora trains with learner.strategy ddp or fsdp2")])
def test_strategy_settings_that_cannot_run(learner, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"job": "srt", "learner": learner})


def test_deepspeed_defaults_to_zero_2():
    assert parse_config({"job": "srt", "learner": {"workers": 2, "strategy": "deepspeed"}}).learner.zero_stage == 2


@pytest.mark.parametrize("layout", ["fsdp2", "zero1"])
def test_sharded_vision_language_model(ray_local, layout):
    """Image prompts (tiny LLaVA) in lockstep: three images for two ranks, one micro-batch each, so
    one rank's placeholder runs no vision tower while the other's images do."""
    from actors.sampler import Sampler, SamplerSettings, SamplingParams
    from tests.test_vision import BLUE, RED, png
    images = [RED, BLUE, png((0, 255, 0))]
    out = Sampler(SamplerSettings(model="tiny-llava", threads=1)).generate(
        [{"text": "what is it?", "image": im} for im in images],
        SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=0))
    samples = [Sample(c.prompt_ids, c.token_ids, a, c.logprobs, images[c.prompt_index])
               for c, a in zip(out, [1.0, -1.0] * 3)]
    kw = {"lr": 1e-3, "micro_batch_tokens": 1}
    single = Learner(settings("tiny-llava", **kw))
    expected = single.train_step(samples)
    grads = {k: p.grad.clone() for k, p in single.model.named_parameters() if p.grad is not None}
    ranks = start_ranks("tiny-llava", **LAYOUTS[layout], **kw)
    got = ray.get(ranks[0].train_step.remote(samples))
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert_weights_match(ranks, weights(single.export_weights()), atol=2e-5, grads=grads, lr=kw["lr"])
    for r in ranks:
        ray.kill(r)


def test_a_stale_extension_build_lock_is_removed(tmp_path, monkeypatch, capsys):
    """A DeepSpeed op build killed midway leaves its lock, on which every later start would wait
    forever: an old one goes (with a message), a recent one (a build under way) stays."""
    import os
    import time

    from actors import deepspeed_zero
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - deepspeed_zero.STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    deepspeed_zero.prepare_environment("cuda")
    assert not stale.exists() and fresh.exists()
    assert "did not finish" in capsys.readouterr().err
