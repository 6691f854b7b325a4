"""Learner actor: GRPO/PPO policy updates on batches of sampled completions (torch, fp32 master weights).

A batch is a list of samples, each (prompt ids, completion ids, advantage), a prompt's samples
next to each other. Each prompt is run once and its samples on top of its KV cache (see
``completion_logprobs``). Micro-batches are whole prompt groups cut by a token budget and their
gradients accumulated; aggregation is exact across micro-batches.

By default one optimizer step per batch, so π_old is the current policy (ratio 1, gradient −A∇logπ);
``ppo_epochs`` × ``mini_batches`` steps per batch, where the clip acts, are in ``actors/ppo_update.py``.
The sampler's log-probs are compared against the learner's as a check of the sync.

Data parallel (``world_size`` > 1): one Learner actor per GPU (or CPU process), joined in a
torch.distributed group (NCCL on GPUs, gloo on CPUs). Rank 0 is the role's face: it splits the
batch's prompt groups over the ranks by tokens, every rank runs its share with the *global* token
and sequence counts in the aggregation, the gradients are summed across ranks, and every rank
takes the same optimizer step — so the update equals the single-process one (tested). How the
ranks hold the model (``learner.strategy``: ddp, fsdp2, deepspeed) is in ``actors/data_parallel.py``.

Checkpoints (what resume needs, the optimizer state apart) are in ``actors/learner_checkpoint.py``;
LoRA (``learner.lora``: adapters train, the samplers get them merged) in ``actors/lora.py``.
"""
from __future__ import annotations

import sys

import torch

from actors import data_parallel, deepspeed_zero  # noqa: F401 (deepspeed_zero registers "deepspeed")
from actors.learner_checkpoint import Checkpoints
from actors.logprobs import (Sample, completion_logprobs, completion_targets, prompt_groups,  # noqa: F401
                             sequence_logprobs, token_logprobs)
from actors.learner_settings import LearnerSettings
from actors.ppo_update import PolicyUpdate
from actors.weights.pack import pack_state


def freeze_below(model, trainable_layers: int) -> None:
    """Freeze everything but the top ``trainable_layers`` decoder layers and the final norm.
    Backward then stops at the lowest trainable layer: on a CPU, fine-tuning the top third of a
    model costs about half a full step. (Tied embeddings stay frozen with the input embedding.)
    N at least the model's depth trains everything."""
    layers = model.model.layers
    if trainable_layers < 1:
        raise ValueError(f"trainable_layers must be at least 1, got {trainable_layers}")
    if trainable_layers >= len(layers):
        return
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers:]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)


class Learner(PolicyUpdate, Checkpoints):
    def __init__(self, settings: LearnerSettings):
        from actors.model_loading import load_policy, use_threads
        use_threads(settings.threads)
        torch.manual_seed(settings.seed)
        data_parallel.STRATEGIES[settings.strategy].prepare(settings)
        self.s = settings
        self.model, tokenizer, self.vision = load_policy(settings.model, "float32", settings.device)
        self.pad_id = tokenizer.pad_token_id
        if settings.trainable_layers is not None:
            freeze_below(self.model, settings.trainable_layers)
        if settings.lora is not None:
            from actors.lora import add_adapters
            add_adapters(self.model, settings.lora)
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.rank, self.world_size, self.peers = 0, 1, []
        self.ref = None
        if settings.kl_coef > 0:
            self.ref, _, _ = load_policy(settings.model, "float32", settings.device)
            self.ref.eval().requires_grad_(False)
        self.opt = self._optimizer(torch.optim.AdamW)
        self.strategy = data_parallel.STRATEGIES["ddp"](self)    # one process: until join
        self.version = 0

    def _optimizer(self, cls, **extra):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return cls(trainable, lr=self.s.lr, betas=self.s.betas, weight_decay=self.s.weight_decay, **extra)

    def ready(self) -> bool:
        return True

    # --- data parallel ----------------------------------------------------------------------------

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the process group."""
        import socket

        import ray
        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def join(self, rank: int, world_size: int, address: tuple[str, int], peers: list) -> int:
        """Join the data-parallel group; rank 0 gets the other ranks' handles (``peers``). Every rank
        starts from the same seeded weights; rank 0's are broadcast anyway, so they are equal."""
        import torch.distributed as dist
        backend = "nccl" if self.s.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address[0]}:{address[1]}", rank=rank,
                                world_size=world_size)
        self.rank, self.world_size, self.peers = rank, world_size, peers
        with torch.no_grad():
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)
        self.strategy = data_parallel.build_strategy(self)
        self.strategy.setup()
        return rank

    def _with_peers(self, method: str):
        """Run ``method`` here and on every peer at once (a collective over sharded state); this
        rank's result."""
        calls = [peer.take_part.remote(method) for peer in self.peers]
        result = getattr(self, method)()
        if calls:
            import ray
            ray.get(calls)
        return result

    def take_part(self, method: str) -> bool:
        """A peer's side of rank 0's ``_with_peers(method)``; its result stays here."""
        getattr(self, method)()
        return True

    def whole_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, whole tensor) per parameter of the policy the samplers run; sharded ones are
        all-gathered (a collective). With LoRA: the base model's parameters, adapters merged."""
        with self.strategy.whole():
            if self.s.lora is not None:
                from actors.lora import merged_parameters
                return merged_parameters(self.model, self.strategy.whole_value)
            return [(name, self.strategy.whole_value(p)) for name, p in self.model.named_parameters()]

    def exported_layout(self) -> list[tuple[str, torch.Tensor]]:
        """(name, parameter) in ``whole_parameters``' order and names, without gathering anything."""
        named = [(name, self.strategy.described(p)) for name, p in self.model.named_parameters()]
        if self.s.lora is not None:
            from actors.lora import export_layout
            return export_layout(named)
        return named

    # --- weights out ------------------------------------------------------------------------------

    def policy_version(self) -> int:
        return self.version

    def sync_spec(self):
        """What a broadcast sync sends, in order: (name, dtype, shape) per parameter (a sharded
        parameter's shape is the whole one)."""
        from actors.weights.layout import weight_spec
        return weight_spec(self.exported_layout(), self._sync_dtype())

    def open_weight_group(self, address: tuple[str, int], world_size: int, bucket_mb: float) -> bool:
        """Rank 0 of the learner → samplers broadcast group (``actors/weights/broadcast.py``)."""
        from actors.weights.broadcast import BroadcastGroup
        self.weight_group = (BroadcastGroup(*address, 0, world_size, self.s.device), self.sync_spec(),
                             int(bucket_mb * 2**20))
        return True

    def broadcast_weights(self) -> int:
        """Send the current policy to every sampler in the group; returns the bytes sent."""
        group, spec, bucket = self.weight_group
        return group.send([p for _, p in self._with_peers("whole_parameters")], spec, bucket)

    def pack_on_device(self):
        """(buffer, spec): the current policy, cast to the sync dtype, in one byte buffer on this
        learner's device, laid out by ``sync_spec``."""
        from actors.weights.ipc import pack_on_device
        spec = self.sync_spec()
        tensors = [p for _, p in self._with_peers("whole_parameters")]
        return pack_on_device(tensors, spec, torch.device(self.s.device)), spec

    def share_weights(self):
        """The current policy in one buffer on this GPU behind a CUDA IPC handle, for samplers on
        the same GPU (``actors/weights/ipc.py``); the buffer lives until the next share."""
        from actors.weights.ipc import share
        if not self.s.device.startswith("cuda"):
            raise ValueError("CUDA IPC needs the learner on a GPU (learner.num_gpus > 0)")
        self.shared_buffer = None          # the previous version's: every sampler has copied it
        torch.cuda.ipc_collect()           # free it now, not when torch next collects sent blocks
        self.shared_buffer, spec = self.pack_on_device()
        return share(self.shared_buffer, spec, self.version)

    def _sync_dtype(self):
        return getattr(torch, self.s.sync_dtype) if self.s.sync_dtype else None

    def export_weights(self):
        """Pack the current policy; return (bytes, weights). Inside Ray the weights are put in the
        object store once and returned as ``[ref]`` (a list, so Ray hands the reference on to the
        samplers instead of resolving it here). Outside Ray (a benchmark) the weights themselves."""
        packed = pack_state(self._with_peers("whole_parameters"), self.version, self._sync_dtype())
        ray = sys.modules.get("ray")      # imported by whoever started Ray; no Ray, no import
        return packed.nbytes, ([ray.put(packed)] if ray and ray.is_initialized() else packed)
