"""Runs inside each vLLM worker process (``worker_extension_cls``): in-place weight updates, from
the object store (``load_packed_weights``), from the learner's buffer on the same GPU (CUDA IPC:
``actors/weights/ipc.py``) or by broadcast from the learner (each tensor-parallel worker is one
rank of the group: ``actors/weights/broadcast.py``)."""
from __future__ import annotations


class WeightUpdateExtension:
    def load_packed_weights(self, packed) -> None:
        from actors.weights.pack import unpack_views
        device = self.device  # the worker's CUDA device
        self.model_runner.model.load_weights(
            weights=((name, view.to(device, non_blocking=True)) for name, view in unpack_views(packed)))

    def load_shared_weights(self, shared) -> bool:
        import torch

        from actors.weights.ipc import open_shared
        pairs = open_shared(shared)
        if pairs is None:
            return False
        self.model_runner.model.load_weights(weights=pairs)
        torch.cuda.synchronize(self.device)
        return True

    def open_weight_group(self, address, first_rank: int, world_size: int, spec, bucket_bytes: int) -> None:
        from actors.weights.broadcast import BroadcastGroup
        rank = first_rank + self.rank                 # this worker's tensor-parallel rank
        self.weight_group = (BroadcastGroup(*address, rank, world_size, str(self.device)), spec, bucket_bytes)

    def receive_weights(self) -> None:
        """Each bucket goes through vLLM's ``load_weights`` (it fuses q/k/v, gate/up and shards
        for tensor parallelism) while its views are valid."""
        group, spec, bucket_bytes = self.weight_group
        for pairs in group.receive(spec, bucket_bytes):
            self.model_runner.model.load_weights(weights=pairs)
