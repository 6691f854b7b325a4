"""LoRA for the learner (``learner.lora``), with PEFT's LoRA layers injected in place.

Each target linear layer y = W x becomes y = W x + (alpha/r)·B A x, A: [r, in], B: [out, r], B = 0
at the start (so the policy starts as the base model). W is frozen; only A and B train, so the
optimizer state is that of the adapters alone.

The model keeps its class (``peft.inject_adapter_in_model``, no PeftModel wrapper), so the
learner's forwards, FSDP's layer classes and the KV-cache keyword are unchanged. What leaves the
learner is merged: W + (alpha/r)·B A under the base model's parameter name (``q_proj.weight``, not
``q_proj.base_layer.weight``), so samplers load it as a full model and need no PEFT.
"""
from __future__ import annotations

import torch

ADAPTER = "default"          # PEFT's adapter name


def add_adapters(model, lora) -> None:
    """Inject LoRA layers (``lora``: ``LoraSettings``) into ``model`` and freeze all but them."""
    from peft import LoraConfig, inject_adapter_in_model
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=lora.target_modules)
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as e:       # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"learner.lora.target_modules {lora.target_modules!r} matches no layer of "
                         f"{type(model).__name__} ({e})") from None
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_name(name: str) -> str:
    """The base model's name of a wrapped layer's parameter: ``q_proj.base_layer.weight`` →
    ``q_proj.weight``."""
    return name.replace(".base_layer.", ".")


def export_layout(named_parameters) -> list[tuple[str, torch.Tensor]]:
    """(base name, parameter) for everything the samplers get: adapters dropped, wrapped layers
    renamed (shapes as the merged weights)."""
    return [(base_name(n), p) for n, p in named_parameters if not is_adapter(n)]


@torch.no_grad()
def merged_parameters(model, whole=lambda t: t) -> list[tuple[str, torch.Tensor]]:
    """(base name, W + (alpha/r)·B A) for each wrapped layer's weight, (name, value) for the rest;
    ``whole`` turns a sharded tensor into the whole one (a collective under FSDP: every rank
    calls this in the same order)."""
    from peft.tuners.lora import LoraLayer
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in model.named_parameters():
        if is_adapter(name):
            continue
        value = whole(p)
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner in layers and leaf == "weight":
            value = value + delta(layers[owner], whole)
        out.append((base_name(name), value))
    return out


def delta(layer, whole=lambda t: t) -> torch.Tensor:
    """(alpha/r)·B A of one LoRA layer, shaped as its base weight."""
    a = whole(layer.lora_A[ADAPTER].weight)
    b = whole(layer.lora_B[ADAPTER].weight)
    d = (b @ a) * layer.scaling[ADAPTER]
    return d.T if getattr(layer, "fan_in_fan_out", False) else d


def adapter_state(state: dict) -> dict:
    """The adapters' entries of a state dict (what a LoRA checkpoint stores as weights)."""
    return {k: v for k, v in state.items() if is_adapter(k)}
