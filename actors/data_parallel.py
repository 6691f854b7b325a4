"""How the learner's data-parallel ranks hold the model and combine their gradients.

Three layouts (``learner.workers`` > 1), the same update in each (tested against one process):

- replicated: every rank holds the whole model and Adam state; gradients are all-reduced.
- ZeRO-1 (``shard_optimizer``): whole model on every rank, each keeps the Adam state of 1/N of the
  parameters (``torch.distributed.optim.ZeroRedundancyOptimizer``).
- fully sharded (``shard_weights``, FSDP2 ``fully_shard``): each rank keeps 1/N of every parameter,
  its gradient and its Adam state; a decoder layer's parameters are all-gathered just before its
  forward and backward and freed after, gradients reduce-scattered. Every rank must then run the
  same number of forwards and backwards per step (the collectives pair up across ranks), so a rank
  with fewer micro-batches runs placeholder ones whose loss is zero.

Gradients are *summed* across ranks, not averaged: each rank's loss is already normalised by the
whole batch's token/sequence counts. Checkpoints and exported weights are whole tensors in every
layout, so a run can resume under another layout.
"""
from __future__ import annotations

import torch


def sum_gradients(model: torch.nn.Module) -> None:
    """All-reduce (sum) the trainable parameters' gradients in one flat buffer; a rank without
    samples adds zeros."""
    import torch.distributed as dist
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def sum_over_ranks(value: float, world: int) -> float:
    """Σ over the ``world`` ranks of the process group of one number each (itself when alone)."""
    if world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2 in place: one unit per layer of the text decoder (its classes named in the model's
    ``_no_split_modules``), the rest in the root unit. A VLM's vision tower stays in the root unit:
    a micro-batch without images (a placeholder) never runs it, and its collectives must not
    depend on that."""
    from torch.distributed.fsdp import fully_shard
    layer_types = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.get_decoder().modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules); "
                         "learner.shard_weights cannot tell where to cut it")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for unit in [*layers, model]:                     # the settings are per unit
        unit.set_gradient_divide_factor(1.0)          # sum, see above
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    # a placeholder micro-batch leaves a VLM's vision tower without gradients on its rank: reduce
    # zeros for it, or the ranks' reduce-scatters would differ in size
    model.set_reduce_scatter_unused_params(True)


def gathered(value):
    """A whole tensor from a sharded one (a collective: every rank calls it, in the same order);
    anything else unchanged."""
    from torch.distributed.tensor import DTensor
    return value.full_tensor() if isinstance(value, DTensor) else value


def gathered_state(state):
    """``gathered`` through a nested state dict (e.g. an optimizer's)."""
    if isinstance(state, dict):
        return {k: gathered_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(gathered_state(v) for v in state)
    return gathered(state)


def sharded_like(value, like):
    """This rank's shard of the whole tensor ``value``, laid out as ``like`` (a DTensor); every rank
    holds ``value`` already, so nothing is communicated. ``value`` as is when ``like`` is whole."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if not isinstance(like, DTensor) or not isinstance(value, torch.Tensor) or value.shape != like.shape:
        return value
    return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, params: list[torch.Tensor]) -> dict:
    """A whole optimizer state dict (single-process layout: ``state[i]`` belongs to ``params[i]``)
    cut into this rank's shards of the sharded ``params``."""
    per_param = {i: {k: sharded_like(v, params[i]) for k, v in entry.items()}
                 for i, entry in state["state"].items()}
    return {**state, "state": per_param}
