"""How the learner's data-parallel ranks hold the model and combine their gradients: one
``Strategy`` per ``learner.strategy``, found by name in ``STRATEGIES``.

- ``ddp``: every rank holds the whole model and Adam state; gradients are all-reduced. One process
  (``learner.workers: 1``) is this strategy without the all-reduce.
- ``fsdp2`` (FSDP2 ``fully_shard``): each rank keeps 1/N of every parameter, its gradient and its
  Adam state; a decoder layer's parameters are all-gathered just before its forward and backward
  and freed after, gradients reduce-scattered.
- ``deepspeed`` (``actors/deepspeed_zero.py``): DeepSpeed's ZeRO stage 1 (Adam state sharded),
  2 (+ gradients) or 3 (+ weights).

A strategy whose collectives run inside forward or backward (``lockstep``) needs every rank to run
the same number of forwards and backwards per step, so a rank with fewer micro-batches runs
placeholder ones whose loss is zero.

Gradients are *summed* across ranks, not averaged: each rank's loss is already normalised by the
whole batch's token/sequence counts. Checkpoints and exported weights are whole tensors under every
strategy (the single-process layout), so a run can resume under another strategy.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

STRATEGIES: dict[str, type] = {}


def register_strategy(name: str):
    """Class decorator: the strategy ``learner.strategy: NAME`` builds."""
    def add(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return add


@register_strategy("ddp")
class Strategy:
    """Replicated ranks (and the single process): the Learner's own model and torch optimizer.
    ``learner`` has ``model``, ``opt``, ``s`` (settings), ``world_size``."""
    lockstep = False

    def __init__(self, learner):
        self.learner = learner

    @classmethod
    def prepare(cls, settings) -> None:
        """Called before the learner loads its model (and its libraries read the environment)."""

    def setup(self) -> None:
        """Called once every rank has joined the process group."""

    @property
    def module(self):
        """What the forwards run through."""
        return self.learner.model

    def zero_grad(self) -> None:
        self.learner.opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Sum the gradients across ranks, clip them to ``grad_clip`` (g·min(1, c/(‖g‖ + 1e-6))),
        take the optimizer step; returns ‖g‖ before clipping."""
        model = self.learner.model
        if self.learner.world_size > 1:
            sum_gradients(model)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), self.learner.s.grad_clip))
        self.learner.opt.step()
        return norm

    def whole(self):
        """A context in which the model's parameters are whole tensors (a collective when sharded)."""
        return nullcontext()

    def described(self, param):
        """A tensor with ``param``'s whole shape and dtype, without gathering it."""
        return param

    def whole_value(self, value):
        """``value`` (a parameter or state-dict tensor, inside ``whole()``) as a whole tensor."""
        return gathered(value)

    def optimizer_state(self) -> dict | None:
        """The optimizer state as one process's ``torch.optim.AdamW.state_dict()`` (``state[i]``
        belongs to the i-th trainable parameter); a collective when sharded."""
        return gathered_state(self.learner.opt.state_dict())

    def load_weights(self, whole: dict) -> tuple[list, list]:
        """Whole tensors by state-dict name into this rank's parameters; (missing, unexpected)."""
        model = self.learner.model
        current = model.state_dict()
        return model.load_state_dict({k: sharded_like(v, current.get(k)) for k, v in whole.items()},
                                     strict=False)

    def load_optimizer_state(self, state: dict) -> None:
        self.learner.opt.load_state_dict(state)


@register_strategy("fsdp2")
class FullySharded(Strategy):
    """FSDP2: parameters, gradients and Adam state in 1/N shards (DTensors); gradients are
    reduce-scattered in backward."""
    lockstep = True

    def setup(self) -> None:
        shard_model(self.learner.model)
        self.learner.opt = self.learner._optimizer(torch.optim.AdamW)

    def step(self) -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(self.learner.model.parameters(), self.learner.s.grad_clip))
        self.learner.opt.step()
        return norm

    def load_optimizer_state(self, state: dict) -> None:
        params = [p for group in self.learner.opt.param_groups for p in group["params"]]
        self.learner.opt.load_state_dict(shard_optimizer_state(state, params))


def build_strategy(learner):
    """The settings' strategy for ``learner`` (DeepSpeed's registers when its module is imported)."""
    return STRATEGIES[learner.s.strategy](learner)


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
                         "learner.strategy: fsdp2 cannot tell where to cut it")
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
