"""Tensor parallelism 2 on vLLM-CPU: two worker processes, each holding half of every sharded
weight; an update (object store, then broadcast) must reach both ranks' shards.

SmolLM2's 9 heads do not divide by 2, so the model is a tiny random Llama (4 heads of 32, the
smallest head vLLM's CPU attention takes) with the test suite's word-level tokenizer."""
from __future__ import annotations

import pytest
import torch

from actors.sampler import Sampler, SamplerSettings, SamplingParams
from actors.weights.pack import pack_state

pytestmark = pytest.mark.vllm
EMBED = "model.embed_tokens.weight"      # vocabulary-parallel: rank r holds rows r·V/2 … (r+1)·V/2
NORM = "model.norm.weight"               # replicated on both ranks


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import EOS_ID, PAD_ID, VOCAB_SIZE
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory):
    from conftest import build_tokenizer
    path = tmp_path_factory.mktemp("tp_llama")
    model = build_model()
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def tp_sampler(tp_model):
    import vllm  # noqa: F401  (missing vllm fails here: these tests never skip for lack of it)
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")       # one core per rank
    mp.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    s = Sampler(SamplerSettings(tp_model[0], backend="vllm", tensor_parallel_size=2,
                                extra={"max_model_len": 256, "distributed_executor_backend": "mp"}))
    mp.undo()      # the engine's processes have their environment; later engines bind on their own
    yield s
    s.backend.llm.llm_engine.engine_core.shutdown()


def shard_sums(sampler) -> list[float]:
    """Per rank (in rank order): the sum of its embedding shard, the sum of its norm weight."""
    return sum(sampler.backend.llm.collective_rpc("weight_checksum", args=([EMBED, NORM],)), [])


def expected(named: dict) -> list[float]:
    half = named[EMBED].shape[0] // 2
    return sum([[float(named[EMBED][r * half:(r + 1) * half].sum()), float(named[NORM].sum())]
                for r in range(2)], [])


def scaled(model, factor: float) -> dict:
    return {n: p.detach() * factor + 0.01 for n, p in model.named_parameters()}


def test_weights_reach_both_ranks(tp_model, tp_sampler):
    from test_vllm_real import broadcast
    _, model = tp_model
    ids = [tp_sampler.encode([{"role": "user", "content": "what is one plus two ?"}])]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=6)
    before = tp_sampler.backend.generate(ids, params)
    assert shard_sums(tp_sampler) == pytest.approx(expected(dict(model.named_parameters())), rel=1e-5)
    new = scaled(model, 1.5)
    tp_sampler.load_weights(pack_state(new.items(), version=1))
    assert shard_sums(tp_sampler) == pytest.approx(expected(new), rel=1e-5)
    assert tp_sampler.backend.generate(ids, params) != before
    assert tp_sampler.weight_ranks() == 2
    newer = scaled(model, 0.5)
    broadcast(tp_sampler.backend, list(newer.items()))         # ranks 1 and 2 of a gloo group
    assert shard_sums(tp_sampler) == pytest.approx(expected(newer), rel=1e-5)
    original = dict(model.named_parameters())
    tp_sampler.load_weights(pack_state(original.items(), version=2))
    assert tp_sampler.backend.generate(ids, params) == before
