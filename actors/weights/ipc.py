"""Learner → a sampler on the *same* GPU (``ray.placement: colocated``): CUDA IPC.

The learner copies its weights (cast to the sync dtype) into one device buffer laid out as every
transport lays out weights (``actors/weights/layout.py``) and hands out a CUDA IPC handle to it, as
``torch.multiprocessing`` does between processes. A sampler process on the same GPU maps the
buffer and copies from it: device to device, no host round trip, no collective. The learner keeps
the buffer until its next share, and every reader has finished before the sync returns. A sampler
on another GPU (or a tensor-parallel engine) cannot map it and says so; the controller sends it
the object-store copy instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.weights.layout import Spec, bucket_size, fill, views, whole


@dataclass
class SharedWeights:
    version: int
    spec: Spec
    device_uuid: str        # the GPU holding the buffer (indices differ between processes)
    handle: tuple           # ``reduce_tensor``'s arguments for ``rebuild_cuda_tensor``
    nbytes: int

    DEVICE_ARG = 6          # where ``rebuild_cuda_tensor`` takes the device index


def device_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def pack_on_device(tensors: list[torch.Tensor], spec: Spec, device: torch.device) -> torch.Tensor:
    """One byte buffer on ``device`` holding ``tensors`` as ``spec`` lays them out."""
    bucket = whole(spec)
    flat = torch.empty(bucket_size(spec, bucket), dtype=torch.uint8, device=device)
    fill(flat, tensors, spec, bucket)
    return flat


def share(flat: torch.Tensor, spec: Spec, version: int) -> SharedWeights:
    """An IPC handle to ``pack_on_device``'s buffer on a GPU: keep the buffer alive while any
    process may read it."""
    from torch.multiprocessing.reductions import reduce_tensor
    torch.cuda.synchronize(flat.device)
    _, handle = reduce_tensor(flat)
    return SharedWeights(version, spec, device_uuid(flat.device), tuple(handle), flat.numel())


def open_shared(shared: SharedWeights) -> list[tuple[str, torch.Tensor]] | None:
    """(name, view) pairs into the learner's buffer, or None when it is on a GPU this process
    does not see. Copy out of the views, then ``torch.cuda.synchronize()`` before returning."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor
    local = [i for i in range(torch.cuda.device_count())
             if device_uuid(torch.device("cuda", i)) == shared.device_uuid]
    if not local:
        return None
    args = list(shared.handle)
    args[SharedWeights.DEVICE_ARG] = local[0]
    flat = rebuild_cuda_tensor(*args)
    return list(views(flat, shared.spec, whole(shared.spec)))
