"""The vLLM backend's wiring, against a stand-in ``vllm`` module (vLLM itself needs a GPU).

What is checked is evoray's side: the arguments it gives vLLM's offline ``LLM`` API, how it reads
completions, log-probs and finish reasons back, and that a weight update goes to every worker
through ``collective_rpc`` followed by a prefix-cache reset.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from actors.sampler import SamplingParams, VLLMBackend, SamplerSettings
from actors.weights.pack import pack_state


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list
    logprobs: list
    finish_reason: str


@dataclass
class RequestOutput:
    outputs: list


class FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def get_tokenizer(self):
        return "tokenizer"

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(("generate", prompts, params))
        return [RequestOutput([CompletionOutput([5, 2], [{5: Logprob(-0.5)}, {2: Logprob(-0.1)}], "stop"),
                               CompletionOutput([7, 7], [{7: Logprob(-1.0)}, {7: Logprob(-2.0)}], "length")])
                for _ in prompts]

    def collective_rpc(self, method, args=()):
        self.calls.append(("rpc", method, args))
        return [True] * self.kwargs.get("tensor_parallel_size", 1)     # one result per worker

    def reset_prefix_cache(self):
        self.calls.append(("reset",))


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: kw
    mod.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", mod)
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_engine_arguments_and_outputs(fake_vllm):
    backend = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm", dtype="bfloat16",
                                          tensor_parallel_size=2, gpu_memory_utilization=0.4))
    assert backend.llm.kwargs["tensor_parallel_size"] == 2
    assert backend.llm.kwargs["worker_extension_cls"] == "actors.weights.vllm_worker.WeightUpdateExtension"
    out = backend.generate([[1, 2, 3], [4]], SamplingParams(n=2, temperature=0.7, max_new_tokens=2, seed=3))
    _, prompts, params = backend.llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert params == {"n": 2, "temperature": 0.7, "top_p": 1.0, "max_tokens": 2, "logprobs": 0, "seed": 3}
    assert out[0] == (0, [5, 2], [-0.5, -0.1], True)      # finish_reason "stop" → finished
    assert out[1] == (0, [7, 7], [-1.0, -2.0], False)     # "length" → cut off, no answer
    assert [o[0] for o in out] == [0, 0, 1, 1]


def test_weight_update_goes_to_workers_then_resets_cache(fake_vllm):
    backend = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm"))
    packed = pack_state([("w", torch.ones(2, 2))], version=3)
    backend.load_weights(packed)
    assert backend.llm.calls[0] == ("rpc", "load_packed_weights", (packed,))
    assert backend.llm.calls[1] == ("reset",)


def test_worker_extension_loads_views_on_its_device():
    from actors.weights.vllm_worker import WeightUpdateExtension

    received = {}

    class Model:
        def load_weights(self, weights):
            received.update({name: t.clone() for name, t in weights})

    worker = WeightUpdateExtension()
    worker.device = torch.device("cpu")
    worker.model_runner = types.SimpleNamespace(model=Model())
    packed = pack_state([("a", torch.arange(3.0)), ("b", torch.ones(2, dtype=torch.bfloat16))], version=1)
    packed.buffer.setflags(write=False)
    worker.load_packed_weights(packed)
    assert torch.equal(received["a"], torch.arange(3.0)) and received["b"].dtype == torch.bfloat16


def test_image_prompts_go_as_multi_modal_data(fake_vllm):
    import io

    from PIL import Image
    backend = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm"))
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "PNG")
    backend.generate([[1, 9, 9, 2], [3]], SamplingParams(n=1, max_new_tokens=2), images=[buf.getvalue(), None])
    _, prompts, _ = backend.llm.calls[0]
    assert prompts[0]["prompt_token_ids"] == [1, 9, 9, 2] and prompts[0]["multi_modal_data"]["image"].size == (4, 4)
    assert "multi_modal_data" not in prompts[1]


def test_broadcast_group_goes_to_every_worker(fake_vllm):
    backend = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm", tensor_parallel_size=2))
    assert backend.weight_ranks == 2
    spec = [("w", "float32", (2, 2))]
    backend.open_weight_group(("10.0.0.1", 1234), 3, 5, spec, 1024)
    backend.receive_weights()
    assert backend.llm.calls == [("rpc", "open_weight_group", (("10.0.0.1", 1234), 3, 5, spec, 1024)),
                                 ("rpc", "receive_weights", ()), ("reset",)]


def test_worker_extension_receives_a_broadcast_into_load_weights():
    """The worker side for real, over gloo: rank 0 (the learner) in a thread, this worker as rank 1."""
    import socket
    import threading

    from actors.weights.vllm_worker import WeightUpdateExtension
    from actors.weights.broadcast import BroadcastGroup
    from actors.weights.layout import weight_spec
    tensors = [("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.ones(4, dtype=torch.bfloat16))]
    spec = weight_spec(tensors)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sender = threading.Thread(target=lambda: BroadcastGroup("127.0.0.1", port, 0, 2).send(
        [t for _, t in tensors], spec, bucket_bytes=16))
    sender.start()
    received = {}

    class Model:
        def load_weights(self, weights):
            received.update({name: t.clone() for name, t in weights})

    worker = WeightUpdateExtension()
    worker.rank, worker.device = 0, torch.device("cpu")
    worker.model_runner = types.SimpleNamespace(model=Model())
    worker.open_weight_group(("127.0.0.1", port), 1, 2, spec, 16)
    worker.receive_weights()
    sender.join(timeout=30)
    assert torch.equal(received["a"], tensors[0][1]) and torch.equal(received["b"], tensors[1][1])


def test_vllm_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)     # import vllm → ImportError
    with pytest.raises(ImportError, match=r"sampler.backend 'vllm' needs the vllm package"):
        VLLMBackend(SamplerSettings(model="x", backend="vllm"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU and the [gpu] extra (vllm)")
def test_real_vllm_engine_generates():
    pytest.importorskip("vllm", reason="vllm is not installed (pip install -e .[gpu])")
    backend = VLLMBackend(SamplerSettings(model="smollm2-135m-instruct", backend="vllm", dtype="bfloat16"))
    out = backend.generate([[1, 2, 3]], SamplingParams(n=2, max_new_tokens=4))
    assert len(out) == 2 and all(len(o[1]) <= 4 for o in out)


def test_shared_weights_go_to_the_one_worker_then_reset_cache(fake_vllm):
    backend = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm"))
    assert backend.load_shared("handle") is True
    assert backend.llm.calls == [("rpc", "load_shared_weights", ("handle",)), ("reset",)]
    # tensor parallel: the other workers sit on other GPUs and cannot map the learner's buffer
    tp = VLLMBackend(SamplerSettings(model=str(fake_vllm), backend="vllm", tensor_parallel_size=2))
    assert tp.load_shared("handle") is False and tp.llm.calls == []
