"""actors/weights/pack.py: one contiguous byte buffer + an index, views out, in-place loads."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from actors.weights.pack import PackedWeights, load_packed, pack_state, unpack_views


def mixed_tensors() -> dict[str, torch.Tensor]:
    """Several dtypes and shapes, a scalar among them (offsets: each start rounded up to 16 bytes)."""
    g = torch.Generator().manual_seed(0)
    return {
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),       # 48 bytes at 0
        "f32": torch.randn(4, 5, generator=g),                            # 80 at 48
        "i64": torch.tensor([-3, 0, 2**40]),                              # 24 at 128
        "scalar": torch.tensor(2.5),                                      # 4 at 160 (152 rounded up)
        "f16": torch.randn(3, generator=g).half(),                        # 6 at 176 (164 →)
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),                # 8 at 192 (182 →)
        "i8": torch.tensor([[-128, 127, 0, 1, 5]], dtype=torch.int8),     # 5 at 208 (200 →)
        "flag": torch.tensor([True, False, True]),                        # 3 at 224 (213 →), ends at 227
    }


def test_pack_unpack_roundtrip_is_exact():
    tensors = mixed_tensors()
    packed = pack_state(tensors.items(), version=7)
    assert packed.version == 7
    assert packed.buffer.dtype == np.uint8 and packed.buffer.ndim == 1
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == 178
    assert packed.nbytes == 227
    assert [(n, d, s, o) for n, d, s, o in packed.index] == [
        ("f64", "float64", (2, 3), 0), ("f32", "float32", (4, 5), 48), ("i64", "int64", (3,), 128),
        ("scalar", "float32", (), 160), ("f16", "float16", (3,), 176), ("bf16", "bfloat16", (2, 2), 192),
        ("i8", "int8", (1, 5), 208), ("flag", "bool", (3,), 224)]
    views = dict(unpack_views(packed))
    assert list(views) == list(tensors)
    for name, t in tensors.items():
        v = views[name]
        assert v.dtype == t.dtype and v.shape == t.shape, name
        assert torch.equal(v, t), name
    assert views["scalar"].dim() == 0 and views["scalar"].item() == 2.5


def test_pack_copies_and_views_share_the_buffer():
    tensors = mixed_tensors()
    packed = pack_state(tensors.items(), version=0)
    original = tensors["f32"].clone()
    tensors["f32"].add_(1.0)                       # the buffer holds a copy, not the tensor
    views = dict(unpack_views(packed))
    assert torch.equal(views["f32"], original)
    packed.buffer[48:52] = 0                       # ... and the views are views of the buffer
    assert views["f32"][0, 0].item() == 0.0


def test_pack_of_parameters_that_require_grad():
    lin = torch.nn.Linear(3, 2)
    packed = pack_state(lin.named_parameters(), version=1)
    views = dict(unpack_views(packed))
    assert torch.equal(views["weight"], lin.weight.detach()) and not views["weight"].requires_grad


def make_module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 5, bias=False))
    m.register_buffer("scale", torch.randn(5))
    return m


def test_load_packed_copies_exactly_in_place():
    src, dst = make_module(0), make_module(1)
    assert not torch.equal(src[0].weight, dst[0].weight)
    ptrs = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    named = list(src.named_parameters()) + list(src.named_buffers())
    packed = pack_state(named, version=3)
    assert load_packed(dst, packed) == packed.nbytes
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert {k: v.data_ptr() for k, v in dst.state_dict().items()} == ptrs, "copied in place"
    assert dst[0].weight.requires_grad
    # a later version overwrites again
    with torch.no_grad():
        src[2].weight.mul_(-2)
    load_packed(dst, pack_state(src.named_parameters(), version=4))
    assert torch.equal(dst[2].weight, src[2].weight)


def test_cast_to_bfloat16_gives_bfloat16_views():
    src, dst = make_module(0), make_module(1)
    packed = pack_state(src.named_parameters(), version=2, dtype=torch.bfloat16)
    assert {d for _, d, _, _ in packed.index} == {"bfloat16"}
    views = dict(unpack_views(packed))
    assert sum(v.numel() * v.element_size() for v in views.values()) == 2 * sum(p.numel() for p in src.parameters())
    for name, view in unpack_views(packed):
        assert view.dtype == torch.bfloat16
        assert torch.equal(view, dict(src.named_parameters())[name].detach().bfloat16())
    load_packed(dst, packed)                       # float32 parameters take the rounded values
    for name, p in src.named_parameters():
        q = dict(dst.named_parameters())[name]
        assert q.dtype == torch.float32
        assert torch.equal(q, p.detach().bfloat16().float())
        assert not torch.equal(q, p)               # the cast did round something


def test_unknown_parameter_raises_key_error_naming_it_and_loads_nothing():
    src, dst = make_module(0), make_module(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    named = list(src.named_parameters()) + [("decoder.extra.weight", torch.zeros(2))]
    with pytest.raises(KeyError, match=r"decoder\.extra\.weight"):
        load_packed(dst, pack_state(named, version=1))
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), "nothing is copied when a name is unknown"


@pytest.mark.parametrize("how", ["setflags", "frombuffer"])
def test_read_only_buffer_still_loads(how):
    """Ray hands the buffer over as a read-only array mapped from the object store."""
    src, dst = make_module(0), make_module(1)
    packed = pack_state(src.named_parameters(), version=5)
    if how == "setflags":
        buffer = packed.buffer
        buffer.setflags(write=False)
    else:
        buffer = np.frombuffer(packed.buffer.tobytes(), dtype=np.uint8)
    assert not buffer.flags.writeable
    ro = PackedWeights(packed.version, buffer, packed.spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # and without the non-writable-array warning
        assert load_packed(dst, ro) == ro.nbytes
    for name, p in src.named_parameters():
        assert torch.equal(dict(dst.named_parameters())[name], p)


@pytest.mark.parametrize("order", ["f16-then-f32", "f32-then-i64", "bool-then-f32"])
def test_pack_handles_any_dtype_order(order):
    first, second = {
        "f16-then-f32": (torch.ones(1, dtype=torch.float16), torch.arange(3.0)),   # offset 2 for 4-byte
        "f32-then-i64": (torch.arange(3.0), torch.tensor(5)),                      # offset 12 for 8-byte
        "bool-then-f32": (torch.tensor([True, False, True]), torch.arange(2.0)),   # offset 3 for 4-byte
    }[order]
    named = [("a", first), ("b", second)]
    packed = pack_state(named, version=0)
    for (name, t), (vname, v) in zip(named, unpack_views(packed)):
        assert vname == name and torch.equal(v, t)
