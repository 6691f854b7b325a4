"""Shared fixtures: a tiny random Llama checkpoint with a real (word-level) tokenizer.

The checkpoint is an ordinary Hugging Face directory (config.json, safetensors, tokenizer files,
chat template), so every loader in the project (``load_causal_lm``, ``Learner``, ``Sampler``)
takes it exactly as it takes the real model — in a fraction of a second and without the network.
"""
from __future__ import annotations

import pytest

SPECIAL = ["<pad>", "<eos>", "<unk>"]
WORDS = ["user", "assistant", "system", ":", "|", "what", "is", "the", "answer", "to", "one", "two",
         "three", "four", "five", "six", "seven", "eight", "nine", "ten", "plus", "minus", "times",
         "a", "b", "c", "d", "e", "yes", "no", "it", "so", "then", "and", "or", "not", "cat", "dog",
         "red", "blue", "green", "big", "small", "up", "down", "left", "right", "x", "y", "z", "?",
         ".", "=", "boxed", "think", "done", "ok", "hello", "world", "why"]
VOCAB = SPECIAL + WORDS
assert len(VOCAB) == 63 and len(set(VOCAB)) == len(VOCAB)
VOCAB_SIZE = 64  # one id beyond the tokenizer's vocabulary, as real checkpoints often have
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} | {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def build_tokenizer(words: list[str] = WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIAL + words
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(seed: int = 1234, max_positions: int = 128, vocab_size: int = VOCAB_SIZE):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         initializer_range=0.2, bos_token_id=None, eos_token_id=EOS_ID,
                         pad_token_id=PAD_ID)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = None
    return model.eval()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """Path of a saved tiny LlamaForCausalLM (vocab 64, hidden 32, 2 layers, 4/2 heads, tied
    embeddings, seeded weights) with a word-level tokenizer and a chat template."""
    path = tmp_path_factory.mktemp("tiny_lm")
    build_model().save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_number_lm(tmp_path_factory) -> str:
    """``tiny_lm`` with the ten digits among its words: its random replies hold numbers, so SRT's
    majority votes split and groups train — the wiring of a learner step without the real model."""
    path = tmp_path_factory.mktemp("tiny_number_lm")
    words = WORDS + [str(d) for d in range(10)]
    build_model(vocab_size=len(SPECIAL) + len(words)).save_pretrained(path)
    build_tokenizer(words).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for a module's actors (joined if one is running)."""
    import ray
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def require_docker() -> None:
    """Skip (with the reason) where no Docker engine answers — fail instead under
    EVORAY_REQUIRE_DOCKER=1, which CI sets so the docker tests can never silently vanish there."""
    import os

    from actors.sandbox import docker_available
    why = docker_available()
    if why is None:
        return
    if os.environ.get("EVORAY_REQUIRE_DOCKER") == "1":
        pytest.fail(f"EVORAY_REQUIRE_DOCKER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker_engine():
    require_docker()


@pytest.fixture(scope="session")
def prompt_ids(tiny_lm) -> list[list[int]]:
    """Three chat prompts of different lengths as the tiny model's token ids (the PROMPT_TEXTS of
    tests/test_generation_learner.py)."""
    from actors.model_loading import load_causal_lm
    _, tok = load_causal_lm(tiny_lm)
    texts = ["what is one plus two ?", "hello", "is the cat big or small ? think then answer"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False) for t in texts]
