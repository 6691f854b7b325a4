"""Learner → sampler weights by broadcast, in buckets, over a process group of their own.

The learner (rank 0) and every sampler (ranks 1…N) open a standalone group (a ``TCPStore`` and a
``ProcessGroupNCCL`` between GPUs, ``ProcessGroupGloo`` between CPU processes), separate from any
data-parallel group the learner is in. A sync walks the parameters in a fixed order, copies them
(cast to the sync dtype) into a bucket of ``bucket_mb``, broadcasts the bucket, and each sampler
copies the bucket's views into its own parameters; one bucket at a time, so the extra memory is
one bucket, not one model. Both sides derive the same bucket plan from the same spec (names,
dtypes, shapes), which the learner hands out once when the group opens.
"""
from __future__ import annotations

import datetime
from typing import Iterator

import torch

from actors.weights.layout import Spec, bucket_size, fill, plan_buckets, views


class BroadcastGroup:
    """Rank 0 sends, the other ranks receive; NCCL when ``device`` is a GPU, else gloo."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: str = "cpu",
                 timeout_s: float = 300):
        import torch.distributed as dist
        self.rank, self.device = rank, torch.device(device)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        if self.device.type == "cuda":
            self.pg = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self.options = dist.BroadcastOptions()
        self.options.rootRank = 0

    def _broadcast(self, flat: torch.Tensor) -> None:
        self.pg.broadcast([flat], self.options).wait()

    def send(self, tensors: list[torch.Tensor], spec: Spec, bucket_bytes: int) -> int:
        """Broadcast ``tensors`` (in spec order) bucket by bucket; returns the bytes sent."""
        sent = 0
        for bucket in plan_buckets(spec, bucket_bytes):
            flat = torch.empty(bucket_size(spec, bucket), dtype=torch.uint8, device=self.device)
            fill(flat, tensors, spec, bucket)
            self._broadcast(flat)
            sent += flat.numel()
        return sent

    def receive(self, spec: Spec, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Each received bucket as (name, view) pairs; the views are valid until the next bucket."""
        for bucket in plan_buckets(spec, bucket_bytes):
            flat = torch.empty(bucket_size(spec, bucket), dtype=torch.uint8, device=self.device)
            self._broadcast(flat)
            yield list(views(flat, spec, bucket))
