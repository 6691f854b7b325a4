"""The frozen bottom of a partly trained model, run once per training row instead of every epoch.

``freeze_below`` trains only the top layers; the layers under them never change during a
fine-tuning run, so their output for a given row is the same in every epoch. Fine-tuning keeps it:

    h(row)  = layers[:k](embed(row))                     the first time the row is seen, no grad
    logits  = head(norm(layers[k:](h(row))))            every step, with gradients

k = depth − trainable_layers. Each row is run alone (no padding), then the rows of a step are
left-padded as in ``sequence_logprobs``; padded positions are masked keys, so a row's values do
not depend on its batch-mates. The bottom runs without dropout, as the full forward does when
the model has none (SmolLM2's attention dropout is 0). With the top 10 of SmolLM2-135M's 30 layers trained, a later
epoch's step cost 64 % of the full one on 2 CPU cores (``evoray bench sft --rows 16 --epochs 2``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from actors.generation import left_pad
from actors.logprobs import Sample, completion_logprobs_at_end


def frozen_depth(model) -> int:
    """How many decoder layers from the bottom have no trainable parameter (0: none)."""
    layers = _inner(model).layers
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


def _inner(model):
    """The decoder stack (``.layers``, ``.norm``) of a causal LM, through a DDP wrapper."""
    return getattr(model, "module", model).model


@contextmanager
def _running(model, layers, norm):
    """The model's forward with only ``layers`` (and ``norm`` as its final norm), for a moment:
    the parameters' names outside it stay as they were (the packed weights' names)."""
    inner = _inner(model)
    saved = inner.layers, inner.norm
    inner.layers, inner.norm = layers, norm
    try:
        yield
    finally:
        inner.layers, inner.norm = saved


class FrozenBottom:
    """``h(row)`` of each row (keyed by its tokens) over one fine-tuning run."""

    def __init__(self, model, depth: int):
        if depth < 1:
            raise ValueError(f"no frozen layer to keep: depth {depth}")
        self.depth = depth
        self.hidden: dict[tuple, torch.Tensor] = {}
        self._bottom = torch.nn.ModuleList(list(_inner(model).layers[:depth]))

    @torch.inference_mode()
    def _compute(self, model, ids: list[int], device) -> torch.Tensor:
        x = torch.tensor([ids], device=device)
        with _running(model, self._bottom, torch.nn.Identity()):
            out = _inner(model)(input_ids=x, attention_mask=torch.ones_like(x),
                                position_ids=torch.arange(len(ids), device=device)[None], use_cache=False)
        return out.last_hidden_state[0].clone()

    def of(self, model, ids: list[int], device) -> torch.Tensor:
        key = tuple(ids)
        if key not in self.hidden:
            self.hidden[key] = self._compute(model, ids, device)
        return self.hidden[key]

    def logprobs(self, model, samples: list[Sample], pad_id: int, device: str = "cpu"):
        """``sequence_logprobs`` of ``samples`` from their kept ``h``: [S, T] log-probs, [S, T] mask."""
        if any(s.image is not None for s in samples):
            raise ValueError("the frozen bottom keeps text rows only")
        seqs = [s.prompt_ids + s.token_ids for s in samples]
        hidden = [self.of(model, ids, device) for ids in seqs]
        _, attention = left_pad(seqs, pad_id)
        width = attention.shape[1]
        h = torch.zeros(len(seqs), width, hidden[0].shape[-1], dtype=hidden[0].dtype, device=device)
        for i, x in enumerate(hidden):
            h[i, width - len(x):] = x
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        longest = max(len(s.token_ids) for s in samples)
        inner = _inner(model)
        with _running(model, torch.nn.ModuleList(list(inner.layers[self.depth:])), inner.norm):
            logits = model(inputs_embeds=h, attention_mask=attention.to(device),
                           position_ids=positions.to(device), use_cache=False, logits_to_keep=longest + 1).logits
        return completion_logprobs_at_end(logits, samples, pad_id, device)
