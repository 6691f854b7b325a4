"""The one byte layout every weight transport uses: tensors back to back in spec order, each at a
multiple of ``ALIGN`` bytes (so a view of any dtype starts aligned), cut into buckets of a size
limit. The object store packs the whole model as one bucket, the broadcast sends bucket by bucket,
CUDA IPC shares one bucket on the GPU; both sides derive the same offsets from the same spec."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

ALIGN = 16
Spec = list[tuple[str, str, tuple[int, ...]]]      # (name, torch dtype name, shape) per tensor
Bucket = list[tuple[int, int]]                     # (tensor index in the spec, byte offset)


def weight_spec(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> Spec:
    return [(name, str(dtype or t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in named_tensors]


def nbytes_of(entry) -> int:
    _, dtype, shape = entry
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def plan_buckets(spec: Spec, bucket_bytes: int) -> list[Bucket]:
    """Buckets of (tensor index, byte offset), in spec order; a bucket closes when the next tensor
    would overflow it; a tensor larger than a bucket is a bucket of its own."""
    buckets, current, offset = [], [], 0
    for i, entry in enumerate(spec):
        size = nbytes_of(entry)
        start = -(-offset // ALIGN) * ALIGN
        if current and start + size > bucket_bytes:
            buckets.append(current)
            current, start = [], 0
        current.append((i, start))
        offset = start + size
    return buckets + ([current] if current else [])


def whole(spec: Spec) -> Bucket:
    """Every tensor of ``spec`` in one bucket."""
    return plan_buckets(spec, 1 << 62)[0] if spec else []


def bucket_size(spec: Spec, bucket: Bucket) -> int:
    if not bucket:
        return 0
    i, offset = bucket[-1]
    return offset + nbytes_of(spec[i])


def views(flat: torch.Tensor, spec: Spec, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor view into the bucket's bytes) for each tensor of ``bucket``."""
    for i, offset in bucket:
        name, dtype, shape = spec[i]
        yield name, flat[offset:offset + nbytes_of(spec[i])].view(getattr(torch, dtype)).view(tuple(shape))


def fill(flat: torch.Tensor, tensors: list[torch.Tensor], spec: Spec, bucket: Bucket) -> None:
    """Copy ``tensors`` (in spec order, cast to the spec's dtypes) into ``bucket``'s bytes."""
    with torch.no_grad():
        for (i, _), (_, view) in zip(bucket, views(flat, spec, bucket)):
            view.copy_(tensors[i].detach().reshape(view.shape))
