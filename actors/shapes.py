"""Drawn shape scenes: coloured circles, squares and triangles on a 3 × 3 grid, and a caption for
each that says what is in it.

The images are MM-UPT's ``shapes`` questions (``jobs/mmupt/data.py``) and, from other seeds, the
captioned images the embedded seeing VLM is aligned on (``actors/vision_align.py``). A caption
lists what is drawn ("2 red circles and a blue square"); it is never a question or its answer.
"""
from __future__ import annotations

import io
import random
from collections import Counter

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
CELLS = 3                       # the grid is CELLS × CELLS; one shape per cell at most
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")
OPENERS = ("", "The image shows ", "I see ", "In the picture: ", "A white image with ")

Item = tuple[str, str]          # (shape, colour)


def random_items(rng: random.Random, max_items: int = 6) -> list[Item]:
    return [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, max_items))]


def place(items: list[Item], rng: random.Random) -> list[tuple[int, Item]]:
    """(cell, item) for each item: distinct cells of the grid, row-major from the top left."""
    return list(zip(rng.sample(range(CELLS * CELLS), len(items)), items))


def render(placed: list[tuple[int, Item]], size: int) -> bytes:
    """A white PNG with each item drawn inside its cell."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    step = size // CELLS
    for cell, (shape, colour) in placed:
        x0, y0 = (cell % CELLS) * step + step // 6, (cell // CELLS) * step + step // 6
        x1, y1 = x0 + step * 2 // 3, y0 + step * 2 // 3
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def draw_shapes(items: list[Item], size: int, rng: random.Random) -> bytes:
    """A white PNG with one (shape, colour) per item, on a grid so that none overlap."""
    return render(place(items, rng), size)


def _count(n: int, words: bool) -> str:
    return NUMBER_WORDS[n] if words else str(n)


def caption(items: list[Item], rng: random.Random) -> str:
    """What the image shows, in one of several phrasings: the groups of equal (colour, shape) in a
    random order, each with its count, as digits or words; sometimes the total first."""
    groups = list(Counter((c, s) for s, c in items).items())
    rng.shuffle(groups)
    words = rng.random() < 0.3
    parts = [f"{_count(n, words)} {c} {s}{'s' if n > 1 else ''}" for (c, s), n in groups]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rng.random() < 0.4:
        total = len(items)
        return f"{_count(total, words).capitalize()} shape{'s' if total > 1 else ''}: {listed}."
    text = rng.choice(OPENERS) + listed + "."
    return text[0].upper() + text[1:]


def captioned_scene(key: str, size: int) -> tuple[bytes, str, list[tuple[int, Item]]]:
    """(PNG, caption, placed items) of the scene named ``key``; the same key gives the same scene."""
    rng = random.Random(key)
    items = random_items(rng)
    placed = place(items, rng)
    return render(placed, size), caption(items, rng), placed
