"""Alignment pretraining of an embedded LLaVA's vision tower and projector on captioned shape
scenes (``actors/shapes.py``); the images come from their own seeds
(``caption:{i}``), never MM-UPT's questions, and the text is only the captions.

Two stages, both cheap enough for a CPU (a forward and backward pass through the 135M language
model is the expensive part, so it gets the fewest steps):

1. **cells** — the image tokens are one per grid cell (a 48-pixel image in 16-pixel patches on the
   scenes' 3 × 3 grid). Each cell's token, after the projector, is pulled towards the language
   model's input embeddings of the cell's own caption words: loss = mean_cells ‖proj(cell) −
   (E[colour] + E[shape])‖² (an empty cell: E[" empty"]). No pass through the language model.
2. **captions** — LLaVA's stage 1: the image tokens followed by the whole scene's caption, next-token
   cross-entropy on the caption's tokens only, gradients through the language model into the
   projector and the tower. The language model is frozen, or learns lightly at ``lm_lr``: frozen,
   the 135M model's answers barely depended on the image (docs/mmupt.md has the numbers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from actors.progress_line import ProgressLine
from actors.shapes import CELLS, captioned_scene

SCENE_SIZE = 96                 # MM-UPT's shapes image side (data.image_size's default)
# bump when the captions (actors/shapes.py) or the stages change: a cached build of another
# recipe is then built again rather than silently used (actors/vision.py, ``build_recipe``)
RECIPE = 1
EMPTY = " empty"


@dataclass(frozen=True)
class AlignSpec:
    scenes: int = 1000          # captioned scenes (seeds ``caption:0`` … ``caption:{scenes-1}``)
    cell_steps: int = 200
    cell_batch: int = 32
    cell_lr: float = 2e-3
    caption_steps: int = 120
    caption_batch: int = 8
    caption_lr: float = 3e-4
    lm_lr: float = 0.0          # captions: the language model's learning rate (0: frozen)
    seed: int = 0


def scenes(spec: AlignSpec, start: int = 0):
    """(PNG, caption, placed items) of the alignment scenes ``caption:{start}`` onwards."""
    return [captioned_scene(f"caption:{i}", SCENE_SIZE) for i in range(start, start + spec.scenes)]


def word_embedding(model, tokenizer, word: str):
    """The language model's input embedding of ``word``'s first token (frozen)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    return model.get_input_embeddings().weight[ids[0]].detach()


def cell_targets(model, tokenizer, placed_scenes):
    """[scenes, cells, hidden]: E[colour] + E[shape] for a drawn cell, E[" empty"] for an empty one."""
    import torch
    empty = word_embedding(model, tokenizer, EMPTY)
    out = empty.repeat(len(placed_scenes), CELLS * CELLS, 1)
    for i, placed in enumerate(placed_scenes):
        for cell, (shape, colour) in placed:
            out[i, cell] = word_embedding(model, tokenizer, " " + colour) + word_embedding(model, tokenizer, " " + shape)
    return out.to(torch.float32)


def image_tokens(model, pixel_values):
    """The projected image tokens the language model sees, [batch, tokens, hidden]."""
    import torch
    out = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                         vision_feature_select_strategy="default")
    features = getattr(out, "pooler_output", out)
    return features if isinstance(features, torch.Tensor) else torch.stack(list(features))


def trainable(model):
    """The vision tower and projector train; the language model stays frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_("vision_tower" in name or "multi_modal_projector" in name)
    return [p for p in model.parameters() if p.requires_grad]


def align_cells(model, tokenizer, pixels, targets, spec: AlignSpec, progress: ProgressLine) -> float:
    import torch
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(trainable(model), lr=spec.cell_lr)
    started, loss = time.monotonic(), torch.tensor(0.0)
    for step in range(1, spec.cell_steps + 1):
        idx = torch.randint(len(pixels), (spec.cell_batch,), generator=gen)
        tokens = image_tokens(model, pixels[idx])
        loss = (tokens - targets[idx]).pow(2).sum(-1).mean() / targets.pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        progress("cells", step, spec.cell_steps, started, loss.item())
    return loss.item()


def caption_batch(processor, images, captions):
    """Processor inputs for ``<image>`` + caption, with labels on the caption tokens only."""
    tok = processor.tokenizer
    texts = [f"{processor.image_token}\n{c}{tok.eos_token}" for c in captions]
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    prefix = len(processor(text=[f"{processor.image_token}\n"], images=images[:1])["input_ids"][0])
    labels[:, :prefix] = -100
    labels[enc["attention_mask"] == 0] = -100
    return enc, labels


def caption_loss(model, processor, images, captions):
    enc, labels = caption_batch(processor, images, captions)
    return model(**enc, labels=labels).loss


def caption_optimizer(model, spec: AlignSpec):
    """The tower and projector at ``caption_lr``; the language model too, at ``lm_lr``, if above 0."""
    import torch
    groups = [{"params": trainable(model), "lr": spec.caption_lr}]
    if spec.lm_lr > 0:
        lm = [p for p in model.parameters() if not p.requires_grad]
        for p in lm:
            p.requires_grad_(True)
        groups.append({"params": lm, "lr": spec.lm_lr})
    return torch.optim.AdamW(groups)


def align_captions(model, processor, images, captions, spec: AlignSpec, progress: ProgressLine) -> float:
    import torch
    gen = torch.Generator().manual_seed(spec.seed + 1)
    opt = caption_optimizer(model, spec)
    started, loss = time.monotonic(), torch.tensor(0.0)
    for step in range(1, spec.caption_steps + 1):
        idx = torch.randint(len(images), (spec.caption_batch,), generator=gen).tolist()
        loss = caption_loss(model, processor, [images[i] for i in idx], [captions[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        progress("captions", step, spec.caption_steps, started, loss.item())
    return loss.item()


def align(model, processor, spec: AlignSpec, name: str) -> dict:
    """Both stages on ``spec.scenes`` captioned scenes; returns the last losses."""
    import torch
    torch.manual_seed(spec.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # small matrices: a second thread costs more in waiting than it adds
    try:
        return _align(model, processor, spec, name)
    finally:
        torch.set_num_threads(threads)


def _align(model, processor, spec: AlignSpec, name: str) -> dict:
    import io

    import torch
    from PIL import Image
    data = scenes(spec)
    images = [Image.open(io.BytesIO(png)).convert("RGB") for png, _, _ in data]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    targets = cell_targets(model, processor.tokenizer, [placed for _, _, placed in data])
    progress = ProgressLine(f"building {name}")
    model.train()
    cells = align_cells(model, processor.tokenizer, pixels, targets, spec, progress)
    captions = align_captions(model, processor, images, [c for _, c, _ in data], spec, progress) \
        if spec.caption_steps else float("nan")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"cells": cells, "captions": captions}
