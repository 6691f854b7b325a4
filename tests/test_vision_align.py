"""The captioned shape scenes and the caption alignment of an embedded LLaVA (tiny LM; the real
SmolLM2 build is what `make mmupt-demo` measures)."""
from __future__ import annotations

import io
import random
import re
from collections import Counter

import pytest
import torch

from actors.shapes import CELLS, COLOURS, NUMBER_WORDS, captioned_scene


def caption_counts(text: str) -> Counter:
    """(colour, shape) -> count, read back from a caption."""
    counts = Counter()
    for n, colour, shape in re.findall(r"(\d+|[a-z]+) (red|green|blue) (circle|square|triangle)s?", text.lower()):
        counts[(colour, shape)] += int(n) if n.isdigit() else NUMBER_WORDS.index(n)
    return counts


@pytest.mark.parametrize("key", [f"caption:{i}" for i in range(25)])
def test_the_caption_and_the_pixels_say_what_was_placed(key):
    from PIL import Image
    png, text, placed = captioned_scene(key, 96)
    assert caption_counts(text) == Counter((c, s) for _, (s, c) in placed)
    if text.split()[1].startswith("shape"):       # "Three shapes: …" — the total first
        first = text.split()[0].lower()
        assert (int(first) if first.isdigit() else NUMBER_WORDS.index(first)) == len(placed)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    step = 96 // CELLS
    colour_of = {cell: COLOURS[colour] for cell, (_, colour) in placed}
    for cell in range(CELLS * CELLS):          # the cell's centre lies inside every shape drawn there
        centre = ((cell % CELLS) * step + step // 2, (cell // CELLS) * step + step // 2 + 2)
        assert img.getpixel(centre) == colour_of.get(cell, (255, 255, 255))


def test_captions_vary_and_scenes_are_reproducible():
    texts = {captioned_scene(f"caption:{i}", 48)[1].split()[0] for i in range(40)}
    assert len(texts) >= 4
    assert captioned_scene("caption:7", 48) == captioned_scene("caption:7", 48)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tiny-llava-aligned in a fresh cache, and the same build with no alignment step (its random
    start, the same initialisation)."""
    import os
    from actors import model_loading
    from actors.vision import build_llava
    from actors.vision_align import AlignSpec
    tokenizer = model_loading.resolve_model("smollm2-135m-instruct")   # converted once, in the usual cache
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").mkdir()
    (cache / "models" / "smollm2-135m-instruct").symlink_to(tokenizer)
    os.environ["EVORAY_CACHE"] = str(cache)
    try:
        build_llava(cache / "unaligned", tokenizer, None, AlignSpec(scenes=1, cell_steps=0, caption_steps=0))
        yield {"random": str(cache / "unaligned"), "aligned": model_loading.resolve_model("tiny-llava-aligned")}
    finally:
        del os.environ["EVORAY_CACHE"]


def held_out(n=24):
    from actors.vision import decode_image
    scenes = [captioned_scene(f"caption:{100_000 + i}", 96) for i in range(n)]
    return [decode_image(p) for p, _, _ in scenes], [c for _, c, _ in scenes], [pl for _, _, pl in scenes]


def scores(path):
    """(cell distance, caption loss) of a checkpoint on held-out captioned scenes."""
    from actors.vision import load_vision_lm
    from actors.vision_align import caption_loss, cell_targets, image_tokens
    model, _, vision = load_vision_lm(path, "float32", "cpu")
    images, captions, placed = held_out()
    with torch.no_grad():
        pixels = vision.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        targets = cell_targets(model, vision.processor.tokenizer, placed)
        cells = ((image_tokens(model, pixels) - targets).pow(2).sum(-1).mean() / targets.pow(2).sum(-1).mean()).item()
        return cells, caption_loss(model, vision.processor, images, captions).item()


def test_aligned_model_reads_held_out_scenes_better_than_the_random_one(built):
    random_cells, random_caption = scores(built["random"])
    aligned_cells, aligned_caption = scores(built["aligned"])
    print(f"held-out cells {random_cells:.3f} -> {aligned_cells:.3f}, caption loss {random_caption:.3f} -> {aligned_caption:.3f}")
    assert aligned_cells < 0.5 * random_cells
    assert aligned_caption < random_caption


def test_the_build_is_cached(built, monkeypatch):
    from actors import model_loading, vision_align
    monkeypatch.setattr(vision_align, "align", lambda *a, **k: pytest.fail("aligned again"))
    assert not model_loading.needs_conversion("tiny-llava-aligned")
    assert model_loading.resolve_model("tiny-llava-aligned") == built["aligned"]


def test_a_build_of_another_recipe_is_built_again(tmp_path, monkeypatch):
    """A cached embedded VLM records its recipe; when the recipe changes (other captions, other
    steps) the next run builds it again instead of silently using the old weights."""
    import json

    from actors import model_loading
    from actors.vision import BUILD_FILE, build_recipe
    tokenizer = model_loading.resolve_model("smollm2-135m-instruct")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m-instruct").symlink_to(tokenizer)
    monkeypatch.setenv("EVORAY_CACHE", str(tmp_path))
    path = model_loading.resolve_model("tiny-llava")
    recipe = tmp_path / "models" / "tiny-llava" / BUILD_FILE
    assert json.loads(recipe.read_text()) == build_recipe("tiny-llava")
    assert not model_loading.needs_conversion("tiny-llava")
    recipe.write_text(json.dumps({"language_model": "tiny", "align": {"recipe": 0}}))
    (tmp_path / "models" / "tiny-llava" / "marker").write_text("old build")
    assert model_loading.needs_conversion("tiny-llava")
    assert model_loading.resolve_model("tiny-llava") == path
    assert json.loads(recipe.read_text()) == build_recipe("tiny-llava")
    assert not (tmp_path / "models" / "tiny-llava" / "marker").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m-instruct", "tiny-llava"]
