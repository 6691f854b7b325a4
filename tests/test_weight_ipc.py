"""CUDA IPC from the learner to samplers on its GPU (``actors/weights/ipc.py``): the controller's
routing (samplers that cannot map the buffer get the object-store copy) with stand-in actors, the
config rules, and — on a GPU — a buffer shared with another process for real."""
from __future__ import annotations

import pytest
import ray
import torch

from actors.weights.ipc import SharedWeights
from actors.weights.pack import pack_state
from services.config import ConfigError, parse_config
from actors.weights.sync import WeightSync
from jobs.srt.roles import weight_transport


def test_samplers_off_the_learners_gpu_get_the_object_store_copy(ray_local):
    # defined here so that Ray ships the classes by value (tests/ is not importable in a worker)
    class StandInLearner:
        def share_weights(self):
            return SharedWeights(3, [("w", "float32", (2,))], "GPU-0000", ("handle",), 8)

        def export_weights(self):
            return 8, [ray.put(pack_state([("w", torch.ones(2))], 3))]

    class StandInSampler:
        def __init__(self, on_learner_gpu: bool):
            self.on_learner_gpu, self.took = on_learner_gpu, []

        def load_shared_weights(self, shared) -> bool:
            self.took.append(("ipc", shared.version))
            return self.on_learner_gpu

        def load_weights(self, packed) -> int:
            packed = ray.get(packed[0])
            self.took.append(("object_store", packed.version))
            return packed.version

        def log(self):
            return self.took

    learner = ray.remote(StandInLearner).options(num_cpus=0).remote()
    samplers = [ray.remote(StandInSampler).options(num_cpus=0).remote(flag) for flag in (True, False)]
    stats = WeightSync(learner, samplers, transport="ipc").sync()
    assert stats["sync/version"] == 3.0 and stats["sync/mb"] == 8e-6
    assert ray.get([s.log.remote() for s in samplers]) == [[("ipc", 3)], [("ipc", 3), ("object_store", 3)]]


def test_a_sampler_on_the_cpu_cannot_map_a_gpu_buffer(tiny_lm):
    from actors.sampler import Sampler, SamplerSettings
    sampler = Sampler(SamplerSettings(tiny_lm, threads=1))
    assert sampler.load_shared_weights(SharedWeights(5, [], "GPU-0000", (), 0)) is False
    assert sampler.version == 0


def test_ipc_needs_a_colocated_gpu_learner():
    with pytest.raises(ConfigError, match="weight_sync: ipc .* needs ray.placement: colocated"):
        parse_config({"job": "srt", "learner": {"weight_sync": "ipc", "num_gpus": 1}, "sampler": {"num_gpus": 1}})
    gpus = {"learner": {"num_gpus": 0.5}, "sampler": {"num_gpus": 0.5}}
    assert weight_transport(parse_config({"job": "srt", **gpus, "ray": {"placement": "colocated"}}), True) == "ipc"
    assert weight_transport(parse_config({"job": "srt", **gpus}), False) == "broadcast"
    assert weight_transport(parse_config({"job": "srt"}), True) == "object_store"


def _read_shared(shared, out):
    """In another process: map the learner's buffer, send back what is in it."""
    from actors.weights.ipc import open_shared
    pairs = open_shared(shared)
    out.put({name: view.cpu().clone() for name, view in pairs})
    torch.cuda.synchronize()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a GPU")
def test_another_process_reads_the_shared_buffer_on_the_gpu():
    import torch.multiprocessing as mp

    from actors.weights.layout import weight_spec
    from actors.weights.ipc import pack_on_device, share
    tensors = [("a", torch.randn(3, 5, device="cuda")), ("b", torch.randn(7, device="cuda"))]
    spec = weight_spec(tensors, torch.bfloat16)
    buffer = pack_on_device([t for _, t in tensors], spec, torch.device("cuda"))
    shared = share(buffer, spec, 4)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_read_shared, args=(shared, out))
    child.start()
    got = out.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and shared.nbytes == buffer.numel()
    for name, t in tensors:
        assert torch.equal(got[name], t.to(torch.bfloat16).cpu())
