"""The agent's SFT path: what the learner trains on is what the sampler reads and writes, and the
default schedule gives enough optimizer steps to fit a small set (generation 0 left the agent's
decisions unlearned at batch 8: 2 steps an epoch on 16 rows, first tokens 12/16, greedy 7/16)."""
from __future__ import annotations

import random

import pytest

import torch

from actors.emulator.simulated import SimulatedDevice, reference_actions, seed_suite
from actors.learner import Sample, freeze_below
from actors.model_loading import load_policy
from actors.sampler import Sampler, SamplerSettings, SamplingParams
from actors.sft import plan, sft_step, trainable_state
from actors.weights.pack import pack_state
from jobs.uigenie.config import UIGenieAgentConfig
from jobs.uigenie.policy import REPLY_PREFIX, target_completion

PROMPTS = ["what is one plus two", "what is two plus two", "the cat is big", "the dog is small",
           "red or blue", "green or red", "up and down", "left or right"]
ANSWERS = ["three", "four", "yes", "no", "red", "green", "up", "left"]


def test_reply_prefix_and_completion_tokenise_apart_as_together():
    """BPE merges never cross the prefix/completion boundary: the ids the learner trains on after
    the prefix are the ids the sampler generates after it."""
    from transformers import AutoTokenizer

    from actors.model_loading import resolve_model
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    prefix = tok.encode(REPLY_PREFIX, add_special_tokens=False)
    completions = {target_completion(a) for t in seed_suite()
                   for *_, a, _ in reference_actions(t, SimulatedDevice())}
    assert len(completions) > 50
    for c in completions:
        assert prefix + tok.encode(c, add_special_tokens=False) == tok.encode(REPLY_PREFIX + c,
                                                                             add_special_tokens=False), c


def test_default_sft_schedule_takes_several_steps_per_epoch_of_a_small_set():
    """Decisions are learned last: SmolLM2 at batch 8 (2 steps an epoch on 16 rows, 10 in all)
    fit the boilerplate (token accuracy 0.96) but not the first token (12/16); the default
    batch gives four times the steps for the same compute."""
    a = UIGenieAgentConfig()
    epochs = plan(16, a.sft_epochs, a.sft_batch, random.Random(0))
    steps = [step for epoch in epochs for step in epoch]
    assert len(steps) >= 8 * a.sft_epochs and sum(map(len, steps)) == 16 * a.sft_epochs
    assert all(sorted(i for step in epoch for i in step) == list(range(16)) for epoch in epochs)


def test_sft_rows_are_reproduced_by_the_sampler_after_the_prefix(tiny_lm):
    """Eight rows through encode → encode_reply → the SFT worker's step (one process) → trainable
    weights to the sampler → greedy replies after the prefix: every reply is its target, EOS included."""
    a = UIGenieAgentConfig()
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1, system_prompt="system"))
    torch.manual_seed(0)
    model, tok, _ = load_policy(tiny_lm, "float32", "cpu")
    freeze_below(model, a.trainable_layers)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    prefix = "ok so"
    samples = [Sample(sampler.encode([{"role": "user", "content": p}], prefix),
                      sampler.encode_reply(f"{w} done"), 1.0) for p, w in zip(PROMPTS, ANSWERS)]
    losses = [sft_step(model, opt, [samples[i] for i in idx], 0, 1, tok.pad_token_id, a.micro_batch_tokens,
                       a.grad_clip)
              for epoch in plan(len(samples), 15, 2, random.Random(0)) for idx in epoch]   # a random tiny model
    assert losses[-1] < 0.2 < losses[0]
    sampler.load_weights(pack_state(sorted(trainable_state(model).items()), 1, None))
    out = sampler.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=4), prefix)
    assert [(c.text, c.finished) for c in out] == [(f"{w} done", True) for w in ANSWERS]


def test_decision_weight_scales_the_first_token_in_the_loss_and_its_normaliser(tiny_lm):
    """L = −Σᵢ (w·log π(yᵢ₀) + Σₜ≥₁ log π(yᵢₜ)) / Σᵢ (|yᵢ| − 1 + w), checked against log-probs computed
    apart; w = 1 is the plain token-mean; micro-batches split the same sum."""
    from actors.logprobs import completion_logprobs
    from actors.sft import backward_share
    torch.manual_seed(0)
    model, tok, _ = load_policy(tiny_lm, "float32", "cpu")
    batch = [Sample(tok.encode(p), tok.encode(f" {w} done" + " and so on" * i) + [tok.eos_token_id], 1.0)
             for i, (p, w) in enumerate(zip(PROMPTS[:3], ANSWERS[:3]))]
    with torch.no_grad():
        logp, mask = completion_logprobs(model, batch, tok.pad_token_id, whole_sequences=True)
    rows = [[float(x) for x, m in zip(lp, mk) if m] for lp, mk in zip(logp, mask)]
    assert len({len(r) for r in rows}) > 1                       # completions of different lengths
    for w in (1.0, 6.0):
        want = -sum(w * r[0] + sum(r[1:]) for r in rows) / sum(len(r) - 1 + w for r in rows)
        for budget in (100000, 8):                              # one micro-batch, then one per row
            model.zero_grad()
            got = backward_share(model, batch, 0, 1, tok.pad_token_id, budget, first_weight=w)
            assert got == pytest.approx(want, rel=1e-5)
    plain = -sum(sum(r) for r in rows) / sum(map(len, rows))
    model.zero_grad()
    assert backward_share(model, batch, 0, 1, tok.pad_token_id, 100000) == pytest.approx(plain, rel=1e-5)


def test_decision_weight_reaches_the_sft_worker(monkeypatch):
    """agent.decision_weight → the Ray Train config's first_weight (what train_sft hands sft_step)."""
    import services.ray_train
    from types import SimpleNamespace

    from jobs.uigenie.training import Training
    from services.config import parse_config
    cfg = parse_config({"job": "uigenie", "agent": {"decision_weight": 6.0}})
    seen = {}
    def fit(fn, config, train, storage, name):
        seen.update(config)
        raise RuntimeError("stop after the config")
    monkeypatch.setattr(services.ray_train, "fit", fit)
    training = Training(cfg, "unused", sampler=None, rm=None)
    monkeypatch.setattr(training, "encode", lambda rows: [([1, 2], [3])] * len(rows))
    monkeypatch.setattr("ray.put", lambda x: x)
    with pytest.raises(RuntimeError, match="stop after the config"):
        training.sft([{"prompt": "p", "completion": "c"}], 1, 1, 1e-4, random.Random(0))
    assert seen["first_weight"] == 6.0 and seen["lr"] == 1e-4
