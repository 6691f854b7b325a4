"""``learner.strategy: deepspeed``: DeepSpeed's ZeRO on the learner's ranks (stage 1: Adam state
sharded; 2: + gradients; 3: + weights), the same step as one process (tested).

The learner's update owns its gradient accumulation, loss normalisation and step boundary, so the
engine is built to stay out of them:

- ``managed_gradient_accumulation: false``: ``backward`` accumulates, ``step`` is the boundary
  (a mini-batch's micro-batch count varies); the loss is not divided by accumulation steps;
- DeepSpeed averages gradients across ranks; evoray sums them (each rank's loss is normalised by
  the whole batch's counts), so each rank's loss is multiplied by the world size;
- ``gradient_clipping`` is ``learner.grad_clip`` (DeepSpeed clips like torch: g·c/(‖g‖ + 1e-6)
  when ‖g‖ > c);
- the optimizer is the learner's own ``torch.optim.AdamW`` (DeepSpeed's fused and CPU Adams are
  JIT-compiled C++ that takes minutes to build), which ZeRO re-points at its flat fp32 partitions;
- ZeRO-3 partitions every parameter (``stage3_param_persistence_threshold: 0``), small ones too:
  the layout the tests check is the layout that runs.

Stages 2 and 3 reduce gradients in each backward and ZeRO-3 gathers weights in each forward, so
the ranks run in lockstep (placeholder micro-batches, ``actors/ppo_update.py``).

Weights and Adam state leave and enter as whole tensors in one process's layout
(``GatheredParameters`` for ZeRO-3's weights, DeepSpeed's ``safe_get/set_full_*`` for the fp32
master weights and the Adam moments), so checkpoints are the same files under every strategy.

On CPUs DeepSpeed runs with ``DS_ACCELERATOR=cpu`` over the gloo group the ranks joined. Its first
start JIT-builds a shared-memory communication op (about a minute and a half, once) into
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/evoray/torch_extensions``); a build killed midway leaves
a ``lock`` file that would make every later start wait forever, so an old one is removed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from actors.data_parallel import Strategy, register_strategy

EXTENSIONS_DIR = Path.home() / ".cache" / "evoray" / "torch_extensions"
STALE_LOCK_S = 900        # a build takes ~90 s; a lock this old belongs to a build that died
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def prepare_environment(device: str) -> None:
    """Before DeepSpeed's first import: its CPU accelerator on a CPU, a persistent extension build
    directory, and no lock left behind by a killed build. ``LOCAL_RANK`` (which DeepSpeed insists
    on) is 0: a Ray actor sees its one GPU as device 0."""
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("LOCAL_RANK", "0")
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR)))
    for lock in root.glob("**/lock") if root.is_dir() else []:
        age = time.time() - lock.stat().st_mtime
        if age > STALE_LOCK_S:
            print(f"deepspeed: removing {lock}, left {age / 60:.0f} min ago by a build that did not "
                  "finish (it would make this start wait for it forever)", file=sys.stderr)
            lock.unlink(missing_ok=True)


def engine_config(settings, world_size: int) -> dict:
    """The DeepSpeed config: see the module docstring for why each entry."""
    zero = {"stage": settings.zero_stage}
    if settings.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "train_batch_size": world_size, "managed_gradient_accumulation": False,
            "gradient_clipping": settings.grad_clip, "zero_optimization": zero,
            "steps_per_print": 2**62, "wall_clock_breakdown": False}


@register_strategy("deepspeed")
class DeepSpeedZero(Strategy):
    lockstep = True

    @classmethod
    def prepare(cls, settings) -> None:
        prepare_environment(settings.device)

    def setup(self) -> None:
        import warnings

        import deepspeed
        # ZeRO gathers with the collective torch renamed: a warning per gather, nothing to act on
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
        learner = self.learner
        self.stage = learner.s.zero_stage
        self.engine, learner.opt, _, _ = deepspeed.initialize(
            model=learner.model, optimizer=learner.opt,
            config=engine_config(learner.s, learner.world_size))
        self.trainable = [p for p in learner.model.parameters() if p.requires_grad]

    @property
    def module(self):
        # forwards go through the engine: it hooks the backward that follows them
        return self.engine

    def zero_grad(self) -> None:
        """The engine clears its gradients itself after each step."""

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.learner.world_size, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        return float(self.engine.get_global_grad_norm())

    def whole(self):
        """ZeRO-3: every parameter gathered whole on every rank (a collective) for the duration."""
        if self.stage != 3:
            return super().whole()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.learner.model.parameters()))

    def described(self, param):
        shape = getattr(param, "ds_shape", None)         # ZeRO-3: the data is a partition
        return param if shape is None else torch.empty(shape, dtype=param.dtype, device="meta")

    def whole_value(self, value):
        # ZeRO-3 frees the gathered storage on leaving ``whole()``: keep a copy
        return value.detach().clone() if self.stage == 3 else value

    def optimizer_state(self) -> dict | None:
        """torch AdamW's single-process state dict from ZeRO's partitions (collectives: every rank
        calls this)."""
        from deepspeed.utils import safe_get_full_optimizer_state
        inner = self.learner.opt.optimizer
        group = {k: v for k, v in inner.param_groups[0].items() if k != "params"}
        state = {"state": {}, "param_groups": [{**group, "params": list(range(len(self.trainable)))}]}
        step = self._step_count()
        if step is None:                  # no step yet: AdamW has no state either
            return state
        for i, p in enumerate(self.trainable):
            entry = {k: safe_get_full_optimizer_state(p, k).detach().clone() for k in ADAM_KEYS}
            state["state"][i] = {"step": torch.tensor(float(step)), **entry}
        return state

    def _step_count(self):
        inner = self.learner.opt.optimizer
        entry = next(iter(inner.state.values()), None)
        return None if not entry else int(entry["step"])

    def load_weights(self, whole: dict) -> tuple[list, list]:
        """Whole tensors into the module's parameters and into ZeRO's fp32 master copy."""
        from deepspeed.utils import safe_set_full_fp32_param
        model = self.learner.model
        names = {name for name, _ in model.named_parameters()}
        missing = [n for n in names if n not in whole]
        unexpected = [n for n in whole if n not in names]
        with self._modifiable():
            for name, p in model.named_parameters():
                if name in whole:
                    p.data.copy_(whole[name].to(p.dtype))
        for name, p in model.named_parameters():
            if name in whole and p.requires_grad:
                safe_set_full_fp32_param(p, whole[name].to(torch.float32))
        return missing, unexpected

    def _modifiable(self):
        if self.stage != 3:
            return super().whole()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.learner.model.parameters()), modifier_rank=0)

    def load_optimizer_state(self, state: dict) -> None:
        """AdamW's single-process state dict into ZeRO's partitions; a fresh engine's empty state
        is created first (AdamW creates it lazily in its first step)."""
        from deepspeed.utils import safe_set_full_optimizer_state
        if not state["state"]:
            return
        zero = self.learner.opt
        step = float(next(iter(state["state"].values()))["step"])
        # the fp32 partitions AdamW steps on (ZeRO-3 swaps them into its param groups per step)
        flats = getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups
        for flat in flats:
            entry = zero.optimizer.state[flat]
            for key in ADAM_KEYS:
                entry.setdefault(key, torch.zeros_like(flat, memory_format=torch.preserve_format))
            entry["step"] = torch.tensor(step)
        link = getattr(self.learner.opt, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:                      # ZeRO 1/2: point each parameter at its moments
            link()
        for i, p in enumerate(self.trainable):
            for key in ADAM_KEYS:
                safe_set_full_optimizer_state(p, state["state"][i][key].to(torch.float32), key)
