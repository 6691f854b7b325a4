"""Sampling (actors/generation.py, actors/sampler.py) and the learner (actors/learner.py) on a tiny
random Llama (tests/conftest.py). Every check is a real computation on the model: the two code paths
that compute the same log-probabilities are compared with each other and with a naive reference."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from actors.generation import generate_groups, left_pad
from actors.learner import Learner, LearnerSettings, Sample, completion_logprobs, sequence_logprobs
from actors.model_loading import load_causal_lm
from actors.sampler import Completion, Sampler, SamplerSettings, SamplingParams
from actors.weights.pack import PackedWeights

# several "EOS" ids so that with a random model about one token in eight ends a completion and both
# finished and unfinished completions occur
MANY_EOS = {1, 6, 7, 8, 9, 10, 11, 12}
PROMPT_TEXTS = ["what is one plus two ?", "hello", "is the cat big or small ? think then answer"]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    torch.set_num_threads(1)
    model, tok = load_causal_lm(tiny_lm)
    return model.eval(), tok


@pytest.fixture(scope="module")
def prompts(lm):
    _, tok = lm
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False) for p in PROMPT_TEXTS]
    assert len({len(p) for p in ids}) == 3, "the prompts must have different lengths (left padding)"
    return ids


def settings(path, **kw) -> LearnerSettings:
    base = dict(model=path, lr=1e-2, threads=1)
    base.update(kw)
    return LearnerSettings(**base)


def mean_logprobs(model, samples, pad_id) -> torch.Tensor:
    with torch.no_grad():
        logp, mask = completion_logprobs(model, samples, pad_id)
    return (logp * mask).sum(-1) / mask.sum(-1)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_params_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")


def fixed_samples(prompts) -> list[Sample]:
    """Two prompts (different lengths), samples grouped by prompt, completions of various lengths."""
    p0, p1 = prompts[0], prompts[2]
    return [
        Sample(p0, [40, 41, 1], 1.0),
        Sample(p0, [33, 34, 35, 36, 37], -1.0),
        Sample(p0, [50], 1.0),
        Sample(p1, [40, 20, 21, 22, 1], 1.0),
        Sample(p1, [60, 61], -1.0),
    ]


# --- generate_groups ------------------------------------------------------------------------------

def test_generate_groups_structure_and_determinism(lm, prompts):
    model, tok = lm
    n, max_new = 4, 8
    b = generate_groups(model, prompts, n, max_new, MANY_EOS, tok.pad_token_id, seed=0)
    assert b.prompt_index == [0] * n + [1] * n + [2] * n
    assert len(b.token_ids) == len(b.logprobs) == len(b.finished) == 3 * n
    for seq, lps, fin in zip(b.token_ids, b.logprobs, b.finished):
        assert len(seq) == len(lps) >= 1
        assert all(lp <= 0.0 and lp > -50 for lp in lps)
        eos_at = [i for i, t in enumerate(seq) if t in MANY_EOS]
        if fin:
            assert eos_at == [len(seq) - 1], "a finished completion ends at its first EOS"
            assert len(seq) <= max_new
        else:
            assert eos_at == [] and len(seq) == max_new
        assert tok.pad_token_id not in seq
    assert any(b.finished) and not all(b.finished), "this seed gives both kinds of completion"

    again = generate_groups(model, prompts, n, max_new, MANY_EOS, tok.pad_token_id, seed=0)
    assert again.token_ids == b.token_ids and again.finished == b.finished
    assert again.logprobs == b.logprobs
    other = generate_groups(model, prompts, n, max_new, MANY_EOS, tok.pad_token_id, seed=1)
    assert other.token_ids != b.token_ids


def test_generate_groups_in_length_batches_keeps_prompt_order_and_greedy_output(lm, prompts):
    """batch_tokens splits the prompts into length-sorted batches; the result is still grouped by
    prompt in the caller's order, and each greedy completion is what one batch gives."""
    model, tok = lm
    budget = max(len(p) for p in prompts)                  # one prompt per batch
    one = generate_groups(model, prompts, 2, 10, MANY_EOS, tok.pad_token_id, temperature=0.0)
    split = generate_groups(model, prompts, 2, 10, MANY_EOS, tok.pad_token_id, temperature=0.0,
                            batch_tokens=budget)
    assert split.prompt_index == one.prompt_index == [0, 0, 1, 1, 2, 2]
    assert split.token_ids == one.token_ids and split.finished == one.finished
    for a, b in zip(split.logprobs, one.logprobs):
        assert a == b


def test_generate_groups_in_length_batches_samples_are_seeded_and_exact(lm, prompts):
    """Sampled batches draw from one seeded stream: the same seed gives the same samples, and each
    recorded log-prob is the model's (teacher-forced check)."""
    model, tok = lm
    kw = dict(temperature=1.0, seed=5, batch_tokens=2 * len(prompts[0]))
    b = generate_groups(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, **kw)
    assert b.prompt_index == [0] * 3 + [1] * 3 + [2] * 3
    assert generate_groups(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, **kw).token_ids == b.token_ids
    samples = [Sample(prompts[pi], ids, 0.0) for pi, ids in zip(b.prompt_index, b.token_ids)]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, samples, tok.pad_token_id)
    for i, lps in enumerate(b.logprobs):
        torch.testing.assert_close(logp[i, :len(lps)], torch.tensor(lps), atol=1e-4, rtol=0)
    assert generate_groups(model, [], 3, 8, MANY_EOS, tok.pad_token_id, **kw).token_ids == []


@pytest.mark.parametrize("budget", [None, 1])
def test_greedy_from_the_shared_prefill_is_a_greedy_call_and_samples_stay(lm, prompts, budget):
    """``greedy`` adds each prompt's temperature-0 completion, first in its group, and leaves the
    seeded samples exactly as a call without it draws them (one batch and one prompt per batch)."""
    model, tok = lm
    kw = dict(seed=3, batch_tokens=budget)
    both = generate_groups(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, greedy=True, **kw)
    samples = generate_groups(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, **kw)
    best = generate_groups(model, prompts, 1, 8, MANY_EOS, tok.pad_token_id, temperature=0.0, **kw)
    assert both.prompt_index == [i for i in range(len(prompts)) for _ in range(4)]
    assert both.token_ids[0::4] == best.token_ids and both.finished[0::4] == best.finished
    assert [t for i, t in enumerate(both.token_ids) if i % 4] == samples.token_ids
    assert [x for i, x in enumerate(both.logprobs) if i % 4] == samples.logprobs
    assert len(set(map(tuple, samples.token_ids))) > len(prompts)      # real samples, not copies


@pytest.mark.parametrize("static", [False, True])
def test_sampler_greedy_comes_first_in_each_group(tiny_lm, static):
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1, static_cache=static))
    params_ = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=0)
    out = sampler.generate(PROMPT_TEXTS[:2], replace(params_, greedy=True))
    best = sampler.generate(PROMPT_TEXTS[:2], SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    assert [out[0].token_ids, out[3].token_ids] == [c.token_ids for c in best]
    assert [c.token_ids for c in out if c not in (out[0], out[3])] == \
        [c.token_ids for c in sampler.generate(PROMPT_TEXTS[:2], params_)]


def test_generate_groups_max_new_tokens_one(lm, prompts):
    model, tok = lm
    b = generate_groups(model, prompts, 2, 1, {tok.eos_token_id}, tok.pad_token_id, seed=3)
    assert all(len(s) == 1 for s in b.token_ids)
    assert b.finished == [s[0] == tok.eos_token_id for s in b.token_ids]


def test_left_padding_does_not_change_greedy_output(lm, prompts):
    """Greedy decoding of a prompt alone equals its decoding in a batch with longer prompts, so
    padding, attention mask and position ids are handled right in prefill and decode."""
    model, tok = lm
    eos = {tok.eos_token_id}
    together = generate_groups(model, prompts, 2, 10, eos, tok.pad_token_id, temperature=0.0)
    for i, p in enumerate(prompts):
        alone = generate_groups(model, [p], 1, 10, eos, tok.pad_token_id, temperature=0.0)
        assert together.token_ids[2 * i] == together.token_ids[2 * i + 1] == alone.token_ids[0]


def test_top_p_restricts_to_the_nucleus(lm, prompts):
    """With a tiny top_p only the most likely token survives: sampling equals greedy and its
    recorded log-probability is 0."""
    model, tok = lm
    greedy = generate_groups(model, prompts, 1, 6, {tok.eos_token_id}, tok.pad_token_id, temperature=0.0)
    nucleus = generate_groups(model, prompts, 3, 6, {tok.eos_token_id}, tok.pad_token_id,
                              temperature=1.0, top_p=1e-6, seed=0)
    for i in range(len(prompts)):
        for j in range(3):
            assert nucleus.token_ids[3 * i + j] == greedy.token_ids[i]
            assert all(abs(lp) < 1e-6 for lp in nucleus.logprobs[3 * i + j])


# --- the sampler's log-probs equal the learner's ----------------------------------------------

def test_sampler_logprobs_equal_teacher_forced_logprobs(lm, prompts):
    model, tok = lm
    b = generate_groups(model, prompts, 3, 10, MANY_EOS, tok.pad_token_id, temperature=1.0,
                        top_p=1.0, seed=7)
    assert len({len(s) for s in b.token_ids}) > 1, "completions of different lengths"
    samples = [Sample(prompts[pi], ids, 0.0) for pi, ids in zip(b.prompt_index, b.token_ids)]
    with torch.no_grad():
        logp, mask = completion_logprobs(model, samples, tok.pad_token_id)
    assert logp.shape == mask.shape == (len(samples), max(len(s) for s in b.token_ids))
    for i, lps in enumerate(b.logprobs):
        assert mask[i].sum().item() == len(lps)
        assert mask[i, :len(lps)].eq(1).all() and mask[i, len(lps):].eq(0).all()
        torch.testing.assert_close(logp[i, :len(lps)], torch.tensor(lps), atol=1e-4, rtol=0)


# --- the shared-prefix trick is exact ---------------------------------------------------------

def naive_logprobs(model, sample: Sample) -> torch.Tensor:
    full = torch.tensor([sample.prompt_ids + sample.token_ids])
    logits = model(input_ids=full).logits[0].float()
    start = len(sample.prompt_ids) - 1
    logp = torch.log_softmax(logits[start:start + len(sample.token_ids)], -1)
    return logp.gather(-1, torch.tensor(sample.token_ids)[:, None]).squeeze(-1)


def grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("short", [False, True], ids=["mixed-lengths", "one-token-completions"])
def test_completion_logprobs_equal_naive_forward_in_value_and_gradient(lm, prompts, short):
    model, tok = lm
    samples = fixed_samples(prompts)
    if short:
        samples = [Sample(s.prompt_ids, s.token_ids[:1], s.advantage) for s in samples]
    gen = torch.Generator().manual_seed(0)
    t = max(len(s.token_ids) for s in samples)
    weights = torch.rand((len(samples), t), generator=gen) + 0.5   # a generic linear functional

    model.zero_grad(set_to_none=True)
    logp, mask = completion_logprobs(model, samples, tok.pad_token_id)
    (logp * mask * weights).sum().backward()
    g_shared = grads(model)

    model.zero_grad(set_to_none=True)
    total = 0.0
    for i, s in enumerate(samples):
        ref = naive_logprobs(model, s)
        torch.testing.assert_close(logp[i, :len(s.token_ids)].detach(), ref.detach(), atol=1e-5, rtol=0)
        total = total + (ref * weights[i, :len(s.token_ids)]).sum()
    total.backward()
    g_naive = grads(model)
    model.zero_grad(set_to_none=True)

    assert g_shared.keys() == g_naive.keys() and len(g_shared) == len(dict(model.named_parameters()))
    for k in g_naive:
        assert g_naive[k].abs().max() > 0
        torch.testing.assert_close(g_shared[k], g_naive[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


# --- Learner.train_step --------------------------------------------------------------------------

def test_train_step_moves_logprobs_by_the_sign_of_the_advantage(tiny_lm, prompts):
    learner = Learner(settings(tiny_lm))
    samples = fixed_samples(prompts)
    before = mean_logprobs(learner.model, samples, learner.pad_id)
    assert learner.version == 0
    stats = learner.train_step(samples)
    after = mean_logprobs(learner.model, samples, learner.pad_id)

    assert learner.version == 1
    assert {"loss", "grad_norm", "tokens", "sequences", "kl", "sampler_logprob_gap"} <= stats.keys()
    assert stats["tokens"] == sum(len(s.token_ids) for s in samples) == 16
    assert stats["sequences"] == 5
    assert stats["grad_norm"] > 0
    # ratio 1 at the single update: per-token loss −A, token-mean over the batch
    expected_loss = -sum(s.advantage * len(s.token_ids) for s in samples) / 16
    assert stats["loss"] == pytest.approx(expected_loss, abs=1e-6)
    assert stats["kl"] == 0.0
    pos = torch.tensor([s.advantage > 0 for s in samples])
    assert (after[pos] > before[pos]).all(), (before, after)
    assert (after[~pos] < before[~pos]).all(), (before, after)
    assert learner.train_step([]) == {} and learner.version == 1


def test_train_step_reports_the_sampler_logprob_gap(tiny_lm, prompts):
    learner = Learner(settings(tiny_lm, lr=0.0))
    samples = fixed_samples(prompts)
    with torch.no_grad():
        logp, mask = completion_logprobs(learner.model, samples, learner.pad_id)
    exact = [Sample(s.prompt_ids, s.token_ids, s.advantage, logp[i, :len(s.token_ids)].tolist())
             for i, s in enumerate(samples)]
    assert learner.train_step(exact)["sampler_logprob_gap"] < 1e-6
    off = [Sample(s.prompt_ids, s.token_ids, s.advantage, [v - 0.5 for v in s.sampler_logprobs])
           for s in exact]
    assert learner.train_step(off)["sampler_logprob_gap"] == pytest.approx(0.5, abs=1e-5)


def test_truncated_importance_sampling_weights_by_hand(tiny_lm, prompts):
    """w = min(π_θ/μ, cap) per token: μ = π_θ gives w = 1 and the plain loss; a sampler that
    gave every token 1/4 of the learner's probability gives π_θ/μ = 4, capped to 2: twice the
    loss; half of it gives w = 0.5. Each sample's mean w comes back in input order."""
    learner = Learner(settings(tiny_lm, lr=0.0, tis_cap=2.0))
    samples = fixed_samples(prompts)
    with torch.no_grad():
        logp, _ = completion_logprobs(learner.model, samples, learner.pad_id)
    behaving = lambda shift: [Sample(s.prompt_ids, s.token_ids, s.advantage,
                                     [v + shift for v in logp[i, :len(s.token_ids)].tolist()])
                              for i, s in enumerate(samples)]
    plain = -sum(s.advantage * len(s.token_ids) for s in samples) / 16
    same = learner.train_step(behaving(0.0))
    assert same["is_weights"] == pytest.approx([1.0] * 5, abs=1e-5)
    assert same["loss"] == pytest.approx(plain, abs=1e-5)
    capped = learner.train_step(behaving(-math.log(4)))
    assert capped["is_weights"] == pytest.approx([2.0] * 5, abs=1e-5)
    assert capped["loss"] == pytest.approx(2 * plain, abs=1e-5)
    assert learner.train_step(behaving(math.log(2)))["is_weights"] == pytest.approx([0.5] * 5, abs=1e-5)
    assert "is_weights" not in Learner(settings(tiny_lm, lr=0.0)).train_step(behaving(0.0))


def test_micro_batches_are_whole_groups_within_the_budget(tiny_lm, prompts):
    learner = Learner(settings(tiny_lm, micro_batch_tokens=1))
    samples = fixed_samples(prompts)
    mbs = learner.micro_batches(samples)
    assert [len(m) for m in mbs] == [3, 2]
    learner.s.micro_batch_tokens = 10**6
    assert [len(m) for m in learner.micro_batches(samples)] == [5]
    # group 0 padded: 3 × (11 + 5) = 48 tokens; both groups: 5 × max(16, 15 + 5) = 100
    assert len(prompts[0]) == 11 and len(prompts[2]) == 15
    learner.s.micro_batch_tokens = 99
    assert [len(m) for m in learner.micro_batches(samples)] == [3, 2]
    learner.s.micro_batch_tokens = 100
    assert [len(m) for m in learner.micro_batches(samples)] == [5]


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_micro_batching_gives_the_same_step(tiny_lm, prompts, aggregation):
    samples = fixed_samples(prompts)
    whole = Learner(settings(tiny_lm, micro_batch_tokens=10**6, aggregation=aggregation))
    split = Learner(settings(tiny_lm, micro_batch_tokens=1, aggregation=aggregation))
    assert len(split.micro_batches(samples)) == 2 and len(whole.micro_batches(samples)) == 1
    assert_params_close(params(whole.model), params(split.model), atol=0)
    a, b = whole.train_step(samples), split.train_step(samples)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # the (clipped) accumulated gradients are left in .grad by the step
    for (k, p), (_, q) in zip(whole.model.named_parameters(), split.model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    # Adam's first step is lr·g/(|g|+eps): where |g| is near eps, float sums in another order move
    # it by a few 1e-6
    assert_params_close(params(whole.model), params(split.model), atol=1e-5)


def test_whole_sequences_give_the_prompt_sharing_logprobs(lm, prompts):
    """One forward per whole sample (right-padded) against one per prompt + its samples on the
    prompt's KV cache (left-padded): the same log-probs and mask."""
    model, tok = lm
    samples = fixed_samples(prompts) + [Sample(prompts[1], [7], 0.5)]
    with torch.no_grad():
        shared, mask = completion_logprobs(model, samples, tok.pad_token_id)
        whole, whole_mask = sequence_logprobs(model, samples, tok.pad_token_id)
    assert torch.equal(mask, whole_mask) and mask.sum() == sum(len(s.token_ids) for s in samples)
    torch.testing.assert_close(whole * mask, shared * mask, atol=1e-5, rtol=0)


def test_gradient_checkpointing_takes_the_same_step(tiny_lm, prompts):
    """Hugging Face keeps no KV cache under gradient checkpointing; the learner then runs whole
    sequences, and the step is the one without checkpointing."""
    samples = fixed_samples(prompts)
    plain, recomputing = Learner(settings(tiny_lm)), Learner(settings(tiny_lm, gradient_checkpointing=True))
    a, b = plain.train_step(samples), recomputing.train_step(samples)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for (k, p), (_, q) in zip(plain.model.named_parameters(), recomputing.model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def test_kl_is_zero_at_the_first_step_and_enters_the_loss(tiny_lm, prompts):
    coef = 0.5
    learner = Learner(settings(tiny_lm, kl_coef=coef))
    assert learner.ref is not None
    samples = fixed_samples(prompts)
    base = -sum(s.advantage * len(s.token_ids) for s in samples) / 16
    first = learner.train_step(samples)
    assert abs(first["kl"]) < 1e-7
    assert first["loss"] == pytest.approx(base, abs=1e-6)
    second = learner.train_step(samples)           # the policy has moved away from the reference
    assert second["kl"] > 1e-4
    assert second["loss"] == pytest.approx(base + coef * second["kl"], abs=1e-6)
    # the reference stays frozen
    fresh, _ = load_causal_lm(tiny_lm)
    assert_params_close(params(learner.ref), params(fresh), atol=0)


def test_save_load_roundtrip_continues_identically(tiny_lm, prompts, tmp_path):
    samples = fixed_samples(prompts)
    second_batch = [Sample(s.prompt_ids, s.token_ids, -s.advantage) for s in samples]
    original = Learner(settings(tiny_lm))
    original.train_step(samples)
    original.save(str(tmp_path / "ckpt"))
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"model.safetensors", "resume", "learner.json"}
    assert (tmp_path / "ckpt" / "resume" / "trainer_state.pt").is_file()

    restored = Learner(settings(tiny_lm))
    assert restored.load(str(tmp_path / "ckpt")) == 1
    assert restored.version == 1
    assert_params_close(params(restored.model), params(original.model), atol=0)
    # tied embeddings stay tied after loading a checkpoint without lm_head.weight
    assert restored.model.lm_head.weight.data_ptr() == restored.model.model.embed_tokens.weight.data_ptr()

    # weights alone (no optimizer state) do not reproduce the next step ...
    weights_only = Learner(settings(tiny_lm))
    weights_only.model.load_state_dict(original.model.state_dict())

    a, b, c = original.train_step(second_batch), restored.train_step(second_batch), \
        weights_only.train_step(second_batch)
    assert a == pytest.approx(b, abs=1e-7)
    assert restored.version == original.version == 2
    assert_params_close(params(restored.model), params(original.model), atol=1e-7)
    # ... the restored optimizer state does
    diff = max((p - q).abs().max().item() for p, q in zip(params(weights_only.model).values(),
                                                          params(original.model).values()))
    assert diff > 1e-4


def test_load_rejects_a_checkpoint_of_another_model(tiny_lm, tmp_path):
    from safetensors.torch import save_file
    learner = Learner(settings(tiny_lm))
    learner.save(str(tmp_path / "ckpt"))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        learner.load(str(tmp_path / "ckpt"))


# --- Sampler and the weight sync ---------------------------------------------------------------

def test_sampler_generate_and_load_weights(tiny_lm, prompts):
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1))
    tok = sampler.backend.tokenizer
    params_ = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
    out = sampler.generate(PROMPT_TEXTS[:2], params_)
    assert len(out) == 6 and all(isinstance(c, Completion) for c in out)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    assert all(c.policy_version == 0 for c in out)
    for c in out:
        assert c.prompt_ids == prompts[c.prompt_index]
        assert len(c.logprobs) == len(c.token_ids) <= 6
        assert c.finished == (c.token_ids[-1] == tok.eos_token_id)
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        assert "<eos>" not in c.text

    learner = Learner(settings(tiny_lm))
    learner.train_step(fixed_samples(prompts))
    learner.train_step(fixed_samples(prompts))
    nbytes, packed = learner.export_weights()
    assert isinstance(packed, PackedWeights) and packed.version == learner.version == 2
    assert nbytes == packed.nbytes == sum(p.numel() * 4 for p in learner.model.parameters())
    assert sampler.load_weights(packed) == 2 and sampler.policy_version() == 2
    assert_params_close(params(sampler.backend.model), params(learner.model), atol=0)
    assert sampler.backend.model.lm_head.weight.equal(learner.model.lm_head.weight)

    # after the sync the sampler's log-probs are the learner's (what sampler_logprob_gap checks)
    out = sampler.generate(PROMPT_TEXTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
    assert all(c.policy_version == 2 for c in out)
    samples = [Sample(c.prompt_ids, c.token_ids, 0.0, c.logprobs) for c in out]
    assert learner.train_step(samples)["sampler_logprob_gap"] < 1e-4


def test_export_weights_casts_to_sync_dtype(tiny_lm):
    learner = Learner(settings(tiny_lm, sync_dtype="bfloat16"))
    nbytes, packed = learner.export_weights()
    assert {dtype for _, dtype, _, _ in packed.index} == {"bfloat16"}
    assert nbytes == sum(p.numel() * 2 for p in learner.model.parameters())


def test_trainable_layers_freezes_everything_below(tiny_lm, prompts):
    learner = Learner(settings(tiny_lm).model_copy(update={"trainable_layers": 1, "lr": 1e-2}))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.train_step(fixed_samples(prompts))
    after = learner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed), changed
    deep = Learner(settings(tiny_lm).model_copy(update={"trainable_layers": 5}))    # more than its 2 layers: all
    assert all(p.requires_grad for p in deep.model.parameters())


# --- the static-cache path (HF generate; compiled on a GPU) ---------------------------------------

@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_generate_static_structure_and_logprobs(tiny_lm, lm, prompts, temperature, top_p):
    """Same contract as generate_groups: n samples per prompt in order, cut after the first EOS,
    and each token's log-prob under the sampling distribution (checked against a plain forward)."""
    from actors.generation import generate_static, nucleus_logprobs
    model, tok = lm
    b = generate_static(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, temperature, top_p, seed=0)
    assert b.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert any(b.finished) and not all(b.finished)
    for ids, lps, fin in zip(b.token_ids, b.logprobs, b.finished):
        assert len(ids) == len(lps) and 1 <= len(ids) <= 8
        assert fin == (ids[-1] in MANY_EOS) and not any(t in MANY_EOS for t in ids[:-1])
    again = generate_static(model, prompts, 3, 8, MANY_EOS, tok.pad_token_id, temperature, top_p, seed=0)
    assert again.token_ids == b.token_ids
    with torch.no_grad():
        for row, (ids, lps) in enumerate(zip(b.token_ids, b.logprobs)):
            seq = torch.tensor([prompts[b.prompt_index[row]] + ids])
            logits = model(input_ids=seq).logits[0, len(prompts[b.prompt_index[row]]) - 1:-1]
            want = nucleus_logprobs(logits, temperature, top_p).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(lps), want, atol=1e-4, rtol=0)


def test_sampler_batch_tokens_comes_from_the_config_and_feeds_the_learner(tiny_lm):
    from services.config import SamplerConfig
    from services.controller import sampler_settings
    s = sampler_settings(SamplerConfig(batch_tokens=64, threads=1), tiny_lm)
    assert s.batch_tokens == 64
    out = Sampler(s).generate(PROMPT_TEXTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
    assert [c.prompt_index for c in out] == [0, 0, 1, 1, 2, 2]
    learner = Learner(settings(tiny_lm, lr=0.0))
    samples = [Sample(c.prompt_ids, c.token_ids, 0.0, c.logprobs) for c in out]
    assert learner.train_step(samples)["sampler_logprob_gap"] < 1e-4


def test_sampler_static_cache_setting_feeds_the_learner(tiny_lm, prompts):
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1, static_cache=True))
    out = sampler.generate(PROMPT_TEXTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
    learner = Learner(settings(tiny_lm, lr=0.0))
    samples = [Sample(c.prompt_ids, c.token_ids, 0.0, c.logprobs) for c in out]
    assert learner.train_step(samples)["sampler_logprob_gap"] < 1e-4
