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

from actors.weights.layout import Spec, bucket_size, fill, views, weight_spec, whole


@dataclass
class PackedWeights:
    version: int
    buffer: np.ndarray          # uint8, the tensors laid out as ``layout.whole(spec)``
    spec: Spec

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    @property
    def index(self) -> list[tuple[str, str, tuple[int, ...], int]]:
        """(name, dtype, shape, byte offset) per tensor."""
        return [(*self.spec[i], offset) for i, offset in whole(self.spec)]


def pack_state(named_tensors, version: int, dtype: torch.dtype | None = None) -> PackedWeights:
    """Copy tensors (optionally cast to ``dtype``) into one byte buffer."""
    pairs = [(name, t.detach()) for name, t in named_tensors]
    spec = weight_spec(pairs, dtype)
    bucket = whole(spec)
    buffer = np.empty(bucket_size(spec, bucket), dtype=np.uint8)
    fill(torch.from_numpy(buffer), [t.cpu() for _, t in pairs], spec, bucket)
    return PackedWeights(version, buffer, spec)


def unpack_views(packed: PackedWeights):
    """Yield (name, tensor view into the buffer); no copies are made."""
    with warnings.catch_warnings():  # a buffer mapped from the object store is read-only; we only read it
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(packed.buffer)
    yield from views(flat, packed.spec, whole(packed.spec))


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
