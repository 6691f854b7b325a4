"""Vision-language models for the transformers path: image prompts for the sampler and the learner.

A VLM checkpoint (its config has a ``vision_config``) loads with its processor. The processor turns
(chat text with one image placeholder, image) into token ids in which the placeholder is already
expanded to the image's tokens; the same ids go to the learner, which only re-runs the image
processor on the image bytes to get ``pixel_values``. So sampler and learner see the same input.

The transformers path drives decoding with explicit 1-D positions (left padding), which holds for
the LLaVA family; models with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL) sample through
vLLM and are refused here with a message.

Embedded VLMs, built from a config once and cached like the embedded GGUF model (no download):
``tiny-llava`` (a 2-layer random LM, for tests) and ``smollm2-135m-llava`` (SmolLM2-135M-Instruct as
the language model) have a random 2-layer CLIP vision tower and projector: they are blind, and
show the mechanics, not a model's ability to read images. ``smollm2-135m-llava-aligned`` (and ``tiny-llava-aligned``, for tests) sees: its
tower and projector are aligned on captioned shape scenes at build time (``actors/vision_align.py``),
the language model frozen.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from actors.vision_align import AlignSpec

IMAGE_TOKEN = "<image>"
VISION_SIZE, PATCH = 56, 14                  # 16 image tokens per image
ALIGNED_SIZE, ALIGNED_PATCH = 48, 16         # 9 image tokens: one per cell of the shape scenes' 3 × 3 grid
MROPE_MODELS = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
# name -> (language model: "tiny" or an embedded text model, the caption alignment run at build time)
EMBEDDED_VLMS = {"tiny-llava": ("tiny", None), "smollm2-135m-llava": ("smollm2-135m-instruct", None),
                 "tiny-llava-aligned": ("tiny", AlignSpec(scenes=128, cell_steps=60, caption_steps=8,
                                                          caption_lr=3e-5)),
                 "smollm2-135m-llava-aligned": ("smollm2-135m-instruct", AlignSpec(lm_lr=2e-5))}


BUILD_FILE = "evoray-build.json"      # the recipe an embedded VLM was built with


def build_recipe(name: str) -> dict:
    """What an embedded VLM's build depends on; a cached build with another recipe is stale."""
    from dataclasses import asdict

    from actors.vision_align import RECIPE
    text, align = EMBEDDED_VLMS[name]
    return {"language_model": text, "align": None if align is None else {**asdict(align), "recipe": RECIPE}}


def is_current_build(name: str, target: Path) -> bool:
    recipe = target / BUILD_FILE
    return (target / "config.json").is_file() and recipe.is_file() and \
        json.loads(recipe.read_text()) == build_recipe(name)


class _Recipe:
    """Written beside the weights by ``save_pretrained_atomically``, so it lands with them."""

    def __init__(self, recipe: dict):
        self.recipe = recipe

    def save_pretrained(self, directory) -> None:
        (Path(directory) / BUILD_FILE).write_text(json.dumps(self.recipe, indent=1) + "\n")


def is_vision_checkpoint(path: str) -> bool:
    """A config with a ``vision_config`` (LLaVA, Qwen2-VL, Gemma 3, …)."""
    config = Path(path) / "config.json"
    if config.is_file():
        return "vision_config" in json.loads(config.read_text())
    from transformers import AutoConfig
    return getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None


def build_llava(target: Path, tokenizer_path: str, text_path: str | None, align=None,
                recipe: dict | None = None) -> None:
    """Write a LLaVA checkpoint + processor at ``target`` (atomic rename): a tiny CLIP vision tower
    and projector on the language model at ``text_path`` (None: a random 2-layer Llama), with the
    tokenizer at ``tokenizer_path``. The tower and projector are random, or with ``align`` (an
    ``actors.vision_align.AlignSpec``) aligned on captioned scenes before they are written.
    ``recipe`` (``build_recipe``) is written beside them."""
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessorPil,
                              CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    from actors.storage import save_pretrained_atomically
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if text_path is None:
        text_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    else:
        text_config = AutoConfig.from_pretrained(text_path)
    size, patch, width = (VISION_SIZE, PATCH, 64) if align is None else (ALIGNED_SIZE, ALIGNED_PATCH, 128)
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=2, image_size=size, patch_size=patch)
    config = LlavaConfig(vision_config=vision, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    if text_path is not None:
        lm = AutoModelForCausalLM.from_pretrained(text_path, dtype=torch.float32)
        model.model.language_model.load_state_dict(lm.model.state_dict())
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    if align is not None:
        from actors.vision_align import align as align_on_captions
        align_on_captions(model, processor, align, target.name)
    save_pretrained_atomically(target, model, processor, *([_Recipe(recipe)] if recipe else []))


def decode_image(data: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(data)).convert("RGB")


class VisionInputs:
    """The processor's two jobs: expanded prompt ids for (text, image), and pixel inputs for images."""

    def __init__(self, processor):
        self.processor = processor

    def prompt_ids(self, text: str, image: bytes) -> list[int]:
        """``text`` is the chat-formatted prompt containing one image placeholder."""
        enc = self.processor(text=[text], images=[decode_image(image)], return_tensors="pt")
        return enc["input_ids"][0].tolist()

    def pixel_inputs(self, images: list[bytes], device="cpu") -> dict:
        """The model's image inputs for ``images`` in order (``pixel_values`` and whatever else the
        image processor returns)."""
        out = self.processor.image_processor(images=[decode_image(b) for b in images], return_tensors="pt")
        return {k: v.to(device) for k, v in out.items()}

    @property
    def placeholder(self) -> str:
        return getattr(self.processor, "image_token", IMAGE_TOKEN)


def load_vision_lm(path: str, dtype: str, device: str):
    """(model, tokenizer, VisionInputs) for a VLM checkpoint directory or hub id."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    config = AutoConfig.from_pretrained(path)
    if config.model_type in MROPE_MODELS:
        raise ValueError(f"{path}: {config.model_type} uses multimodal rotary positions, which the "
                         f"transformers path does not drive; use sampler.backend: vllm for it")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, config=config, dtype=getattr(torch, dtype)).to(device)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, VisionInputs(processor)
