"""The frozen bottom kept over a fine-tuning run: the same log-probs, gradients and optimizer step as
the full forward, each row's bottom run once, and the parameters' names untouched."""
from __future__ import annotations

import random

import pytest
import torch

from actors.frozen_layers import FrozenBottom, frozen_depth
from actors.learner import freeze_below
from actors.logprobs import Sample, sequence_logprobs
from actors.sft import sft_step
from tests.conftest import PAD_ID, VOCAB_SIZE, build_model


def _rows(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample([rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randrange(3, 30))],
                   [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randrange(1, 6))], 1.0) for _ in range(n)]


def _model(trainable: int):
    """The fixture's tiny Llama with 4 layers (the same seed each call), top ``trainable`` trained."""
    config = build_model().config
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    model = type(build_model())(config)
    freeze_below(model, trainable)
    return model.train()


def test_frozen_depth_counts_the_layers_below_the_trained_ones():
    assert frozen_depth(_model(1)) == 3
    assert frozen_depth(_model(3)) == 1
    assert frozen_depth(_model(4)) == 0
    with pytest.raises(ValueError, match="no frozen layer"):
        FrozenBottom(_model(4), 0)


def test_logprobs_and_gradients_match_the_full_forward():
    """Rows of different lengths (left padding differs per batch); the top layers' gradients too."""
    rows = _rows(3)
    full, kept = _model(2), _model(2)
    a, mask_a = sequence_logprobs(full, rows, PAD_ID)
    b, mask_b = FrozenBottom(kept, 2).logprobs(kept, rows, PAD_ID)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (a * mask_a).sum().backward()
    (b * mask_b).sum().backward()
    grads = {n: p.grad for n, p in full.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for n, p in kept.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)
        else:
            assert p.grad is None


def test_each_row_runs_the_bottom_once_and_names_stay(monkeypatch):
    model = _model(1)
    names = [n for n, _ in model.named_parameters()]
    bottom = FrozenBottom(model, 3)
    calls = []
    compute = bottom._compute
    monkeypatch.setattr(bottom, "_compute", lambda m, ids, d: calls.append(1) or compute(m, ids, d))
    rows = _rows(4)
    for _ in range(3):                           # three epochs, batches in different orders
        random.Random(len(calls)).shuffle(rows)
        bottom.logprobs(model, rows[:2], PAD_ID)
        bottom.logprobs(model, rows[2:], PAD_ID)
    assert len(calls) == 4
    assert [n for n, _ in model.named_parameters()] == names
    assert len(model.model.layers) == 4


def test_an_sft_step_with_the_kept_bottom_is_the_full_step():
    """Two optimizer steps (so the second sees updated top layers over the same kept bottom)."""
    rows = _rows(4, seed=1)
    full, kept = _model(2), _model(2)
    bottom = FrozenBottom(kept, frozen_depth(kept))
    for model, frozen in ((full, None), (kept, bottom)):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for batch in (rows[:2], rows[2:], rows[:2]):
            sft_step(model, opt, batch, 0, 1, PAD_ID, 4096, 1.0, first_weight=3.0, frozen=frozen)
    changed = False
    for (n, p), q in zip(full.named_parameters(), kept.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)
        changed |= p.requires_grad
    assert changed
    assert bottom.hidden.keys() == {tuple(r.prompt_ids + r.token_ids) for r in rows}
