"""Learner → sampler weight transfer through the Ray object store.

The learner packs its parameters into one contiguous byte buffer (a numpy array, so Ray stores it
once in shared memory and every reader on the node maps it without a copy) plus a small index of
(name, dtype, shape, offset). ``ray.put`` happens once per version; each sampler ``ray.get``s the
same object and copies the views into its own parameters. The version travels with the weights so
every sample can record the policy that produced it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


ALIGN = 16


@dataclass
class PackedWeights:
    version: int
    buffer: np.ndarray                                   # uint8, all tensors back to back
    index: list[tuple[str, str, tuple[int, ...], int]]   # name, torch dtype name, shape, byte offset

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def pack_state(named_tensors, version: int, dtype: torch.dtype | None = None) -> PackedWeights:
    """Copy tensors (optionally cast to ``dtype``) into one byte buffer."""
    tensors = [(name, t.detach().to(dtype) if dtype else t.detach()) for name, t in named_tensors]
    offsets, offset = [], 0
    for _, t in tensors:
        offset = -(-offset // ALIGN) * ALIGN        # each view must start at a multiple of its itemsize
        offsets.append(offset)
        offset += t.numel() * t.element_size()
    buffer = np.empty(offset, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    index = []
    for (name, t), offset in zip(tensors, offsets):
        size = t.numel() * t.element_size()
        flat[offset:offset + size].view(t.dtype).copy_(t.reshape(-1).cpu())
        index.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
    return PackedWeights(version, buffer, index)


def unpack_views(packed: PackedWeights):
    """Yield (name, tensor view into the buffer); no copies are made."""
    with warnings.catch_warnings():  # a buffer mapped from the object store is read-only; we only read it
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(packed.buffer)
    for name, dtype, shape, offset in packed.index:
        dt = getattr(torch, dtype)
        n = int(np.prod(shape)) if shape else 1
        size = n * torch.empty((), dtype=dt).element_size()
        yield name, flat[offset:offset + size].view(dt).view(shape)


def load_packed(module: torch.nn.Module, packed: PackedWeights) -> int:
    """Copy packed weights into ``module``'s parameters in place; returns bytes copied."""
    copy_into(module, unpack_views(packed))
    return packed.nbytes


def copy_into(module: torch.nn.Module, named_tensors) -> None:
    """Copy (name, tensor) pairs into ``module``'s parameters/buffers of the same names, in place
    (cast to their dtypes). An unknown name fails before anything is copied."""
    params = dict(module.named_parameters())
    params.update(dict(module.named_buffers()))
    pairs = list(named_tensors)
    missing = [name for name, _ in pairs if name not in params]
    if missing:
        raise KeyError(f"weights for unknown parameters: {missing[:5]}")
    with torch.no_grad():
        for name, view in pairs:
            if params[name].shape != view.shape:
                raise ValueError(f"weights for {name}: shape {tuple(view.shape)} does not match "
                                 f"{tuple(params[name].shape)}")
            params[name].copy_(view)
