"""Runs inside each vLLM worker process (``worker_extension_cls``): in-place weight updates, from
the object store (``load_packed_weights``), from the learner's buffer on the same GPU (CUDA IPC:
``actors/weights/ipc.py``) or by broadcast from the learner (each tensor-parallel worker is one
rank of the group: ``actors/weights/broadcast.py``).

vLLM's ``collective_rpc`` carries its arguments as msgpack (engine core and workers are other
processes): ``bytes``, ``str``, numbers, lists and dicts arrive; a dataclass arrives as a dict
and a numpy array not at all. So the sampler side turns every transport's payload into those
(``packed_to_rpc``, ``shared_to_rpc``) and the worker side rebuilds it.

Weights go in through the worker's ``reload_weights``: it loads checkpoint-format
tensors (q/k/v separate, unsharded) and then redoes the post-load processing — fusing, sharding,
and on CPU the repacking of linear weights, which is why a bare ``model.load_weights`` breaks there.
"""
from __future__ import annotations

import pickle

SUPPORTED_VLLM = (0, 32)     # tested: 0.32.x (layerwise reload_weights; its semantics changed across releases)


def packed_to_rpc(packed) -> tuple[bytes, list]:
    """``PackedWeights`` as msgpack carries it: the buffer's bytes and the spec as plain lists."""
    return packed.buffer.tobytes(), spec_to_rpc(packed.spec)


def shared_to_rpc(shared) -> dict:
    """``SharedWeights`` as msgpack carries it. The CUDA IPC handle holds torch types (storage
    class, dtype), so it travels pickled — as ``torch.multiprocessing`` itself sends it."""
    return {"version": shared.version, "spec": spec_to_rpc(shared.spec), "device_uuid": shared.device_uuid,
            "handle": pickle.dumps(shared.handle), "nbytes": shared.nbytes}


def spec_to_rpc(spec) -> list:
    return [[name, dtype, list(shape)] for name, dtype, shape in spec]


def spec_from_rpc(spec) -> list:
    return [(name, dtype, tuple(shape)) for name, dtype, shape in spec]


class WeightUpdateExtension:
    def load_packed_weights(self, buffer: bytes, spec: list) -> None:
        import numpy as np

        from actors.weights.pack import PackedWeights, unpack_views
        packed = PackedWeights(0, np.frombuffer(buffer, dtype=np.uint8), spec_from_rpc(spec))
        self._reload(unpack_views(packed))

    def load_shared_weights(self, shared: dict) -> bool:
        import torch

        from actors.weights.ipc import SharedWeights, open_shared
        pairs = open_shared(SharedWeights(shared["version"], spec_from_rpc(shared["spec"]), shared["device_uuid"],
                                          pickle.loads(shared["handle"]), shared["nbytes"]))
        if pairs is None:
            return False
        self._reload(pairs)
        torch.cuda.synchronize(self.device)
        return True

    def open_weight_group(self, address: list, first_rank: int, world_size: int, spec: list,
                          bucket_bytes: int) -> None:
        from actors.weights.broadcast import BroadcastGroup
        rank = first_rank + self.rank                 # this worker's tensor-parallel rank
        self.weight_group = (BroadcastGroup(address[0], int(address[1]), rank, world_size, str(self.device)),
                             spec_from_rpc(spec), bucket_bytes)

    def receive_weights(self) -> None:
        """The buckets as one stream of (name, view) pairs: each bucket is a tensor of its own, so
        its views stay valid while ``reload_weights`` consumes the stream."""
        group, spec, bucket_bytes = self.weight_group
        self._reload(pair for pairs in group.receive(spec, bucket_bytes) for pair in pairs)

    def weight_checksum(self, names: list) -> list:
        """Sum of each named parameter as this worker holds it (its tensor-parallel shard):
        lets a test see that an update reached every rank."""
        params = dict(self.model_runner.model.named_parameters())
        return [float(params[n].detach().float().sum()) for n in names]

    def _reload(self, pairs) -> None:
        self.reload_weights(weights_iterator=pairs)
        self._refresh_tied_modules()

    def _refresh_tied_modules(self) -> None:
        """An output head tied to the embedding gets no weights of its own, so the reload leaves
        its post-load state stale: on CPU a repacked copy of the old embedding for its GEMM (the
        tokens then come from the old head). Redo that step for every module sharing a weight."""
        owners: set[int] = set()
        for module in self.model_runner.model.modules():
            weight, method = getattr(module, "weight", None), getattr(module, "quant_method", None)
            if weight is None or method is None:
                continue
            if id(weight) in owners:
                method.process_weights_after_loading(module)
            owners.add(id(weight))
