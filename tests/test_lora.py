"""LoRA in the learner (actors/lora.py): only the adapters train, the samplers get W + (alpha/r)·B A
under the base model's names, checkpoints hold the adapters."""
from __future__ import annotations

import pytest
import torch

from actors.learner import Learner, LearnerSettings, Sample
from actors.model_loading import load_causal_lm
from actors.sampler import Sampler, SamplerSettings, SamplingParams
from actors.weights.pack import unpack_views
from services.config import ConfigError, apply_override, parse_config
from tests.test_generation_learner import PROMPT_TEXTS, assert_params_close, fixed_samples, params

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}


def settings(path, **kw) -> LearnerSettings:
    return LearnerSettings(**{"model": path, "lr": 1e-2, "threads": 1, "lora": LORA, **kw})


def exported(learner) -> dict[str, torch.Tensor]:
    _, packed = learner.export_weights()
    return {k: v.clone() for k, v in unpack_views(packed)}


def test_only_adapters_train_and_the_export_is_base_plus_delta(tiny_lm, prompt_ids):
    base, _ = load_causal_lm(tiny_lm)
    want = params(base)
    learner = Learner(settings(tiny_lm))
    assert {n for n, p in learner.model.named_parameters() if p.requires_grad} == \
        {n for n, _ in learner.model.named_parameters() if ".lora_" in n}
    assert_params_close(exported(learner), want, atol=0)          # B = 0: the base model
    learner.train_step(fixed_samples(prompt_ids))
    got = exported(learner)
    assert got.keys() == want.keys()                               # the base model's names
    mine = dict(learner.model.named_parameters())
    moved = 0
    for name, value in got.items():
        layer = name.removesuffix(".weight")
        if layer.endswith(("q_proj", "v_proj")):
            a, b = mine[f"{layer}.lora_A.default.weight"], mine[f"{layer}.lora_B.default.weight"]
            delta = (b @ a).detach() * (8.0 / 4)                   # (alpha/r)·B A, by hand
            torch.testing.assert_close(value - want[name], delta, atol=1e-6, rtol=0)
            assert torch.equal(mine[f"{layer}.base_layer.weight"], want[name])     # W frozen
            moved += int(delta.abs().max() > 1e-4)
        else:
            assert torch.equal(value, want[name]), name
    assert moved == 4                                              # q and v of both layers


def test_the_sampler_runs_the_merged_policy(tiny_lm, prompt_ids):
    """A sampler (no PEFT) loads the merged export; its log-probs are the adapter model's."""
    learner = Learner(settings(tiny_lm))
    learner.train_step(fixed_samples(prompt_ids))
    learner.train_step(fixed_samples(prompt_ids))
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1))
    _, packed = learner.export_weights()
    assert sampler.load_weights(packed) == 2
    out = sampler.generate(PROMPT_TEXTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
    samples = [Sample(c.prompt_ids, c.token_ids, 0.0, c.logprobs) for c in out]
    assert learner.train_step(samples)["sampler_logprob_gap"] < 1e-4
    unmerged = Sampler(SamplerSettings(model=tiny_lm, threads=1))         # the base model differs
    base_out = unmerged.generate(PROMPT_TEXTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
    gap = max(abs(x - y) for c, d in zip(out, base_out) if c.token_ids == d.token_ids
              for x, y in zip(c.logprobs, d.logprobs))
    assert gap > 1e-3


def test_checkpoint_holds_the_adapters_and_resumes(tiny_lm, prompt_ids, tmp_path):
    samples = fixed_samples(prompt_ids)
    original = Learner(settings(tiny_lm))
    original.train_step(samples)
    original.save(str(tmp_path / "ckpt"))
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "adapters.safetensors" in files and "model.safetensors" not in files
    restored = Learner(settings(tiny_lm))
    assert restored.load(str(tmp_path / "ckpt")) == 1
    second = [Sample(s.prompt_ids, s.token_ids, -s.advantage) for s in samples]
    assert original.train_step(second) == pytest.approx(restored.train_step(second), abs=1e-7)
    assert_params_close(exported(restored), exported(original), atol=1e-7)
    with pytest.raises(ValueError, match="holds LoRA adapters; set learner.lora"):
        Learner(LearnerSettings(model=tiny_lm, threads=1)).load(str(tmp_path / "ckpt"))


def test_lora_config_keys(tiny_lm):
    raw = {"job": "srt"}
    apply_override(raw, "learner.lora.rank=8")
    cfg = parse_config(raw)
    assert cfg.learner.lora.rank == 8 and cfg.learner.lora.target_modules == "all-linear"
    assert cfg.learner.settings("m").lora.rank == 8
    with pytest.raises(ConfigError, match="learner.lora.ranks: unknown key"):
        parse_config({"job": "srt", "learner": {"lora": {"ranks": 8}}})
    with pytest.raises(ValueError, match="lora trains adapters only"):
        LearnerSettings(model="m", lora={"rank": 2}, trainable_layers=2)
    with pytest.raises(ValueError, match="matches no layer"):
        Learner(LearnerSettings(model=tiny_lm, threads=1, lora={"target_modules": ["nope"]}))

