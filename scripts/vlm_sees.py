"""Does an embedded VLM see? Its held-out caption loss (nats per caption token) on captioned shape
scenes it was not aligned on (seeds ``caption:100000…``), with each scene's own image and with
another scene's image. A model that reads the image does better with its own.

    python scripts/vlm_sees.py smollm2-135m-llava-aligned smollm2-135m-llava
"""
from __future__ import annotations

import io
import sys


def caption_losses(name: str, scenes: int = 48, batch: int = 8) -> tuple[float, float]:
    import torch
    from PIL import Image

    from actors.model_loading import resolve_model
    from actors.shapes import captioned_scene
    from actors.vision import load_vision_lm
    from actors.vision_align import SCENE_SIZE, caption_loss
    torch.set_num_threads(1)
    model, _, vision = load_vision_lm(resolve_model(name), "float32", "cpu")
    data = [captioned_scene(f"caption:{100_000 + i}", SCENE_SIZE) for i in range(scenes)]
    images = [Image.open(io.BytesIO(png)).convert("RGB") for png, _, _ in data]
    captions = [c for _, c, _ in data]
    others = images[1:] + images[:1]

    def mean_loss(imgs) -> float:
        with torch.no_grad():
            return sum(caption_loss(model, vision.processor, imgs[i:i + batch], captions[i:i + batch]).item()
                       for i in range(0, scenes, batch)) / len(range(0, scenes, batch))
    return mean_loss(images), mean_loss(others)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["smollm2-135m-llava-aligned"]:
        own, other = caption_losses(name)
        print(f"{name}: held-out caption loss {own:.3f} with its own image, {other:.3f} with another scene's")
