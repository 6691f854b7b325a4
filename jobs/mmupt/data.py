"""Image questions: a generated counting set (``shapes``) and user datasets in Parquet.

Every task is a dict ``{"id", "question", "prompt", "answer", "image"}``: ``question`` is the bare
question, ``prompt`` the question in the config's template, ``image`` PNG/JPEG bytes, ``answer``
None where unlabelled. As in SRT, training never reads ``answer`` (only evaluation does).
"""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq

from actors.shapes import COLOURS, SHAPES, draw_shapes, random_items
from jobs.srt.data import _split_of


def shape_tasks(split: str, limit: int, seed: int, fractions: dict[str, float], template: str,
                size: int = 96) -> list[dict]:
    """Up to ``limit`` counting questions on generated images whose id hashes into ``split``."""
    tasks, i = [], 0
    while len(tasks) < limit and i < 50 * limit + 100:
        key = f"shapes:{seed}:{i}"
        i += 1
        if _split_of(key, fractions) != split:
            continue
        rng = random.Random(key)
        items = random_items(rng)
        kind = rng.choice(["all", "shape", "colour"])
        if kind == "all":
            question, answer = "How many shapes are in the image?", len(items)
        elif kind == "shape":
            shape = rng.choice(SHAPES)
            question, answer = f"How many {shape}s are in the image?", sum(s == shape for s, _ in items)
        else:
            colour = rng.choice(list(COLOURS))
            question, answer = f"How many {colour} shapes are in the image?", sum(c == colour for _, c in items)
        tasks.append({"id": key, "question": question, "prompt": template.format(question=question),
                      "answer": str(answer), "image": draw_shapes(items, size, rng)})
    return tasks


def _image_bytes(value, path: Path, row: int) -> bytes:
    """A cell of the ``image`` column: bytes, or a Hugging Face ``Image`` struct ({bytes, path})."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise ValueError(f"dataset {path}: row {row} has no image bytes in column 'image'")
    return bytes(value)


def load_image_tasks(path: str | Path, template: str) -> list[dict]:
    """Read a Parquet file with columns ``image`` (bytes or {bytes, path}), ``question`` (or
    ``prompt``) and optional ``answer`` and ``id``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.suffix != ".parquet":
        raise ValueError(f"dataset {path}: image questions are read from .parquet files")
    table = pq.read_table(path)
    names = set(table.column_names)
    text_column = "question" if "question" in names else "prompt" if "prompt" in names else None
    if "image" not in names or text_column is None:
        raise ValueError(f"dataset {path} needs the columns 'image' and 'question' (or 'prompt'); "
                         f"it has {sorted(names)}")
    tasks = []
    for i, row in enumerate(table.to_pylist()):
        question = row[text_column]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"dataset {path}: row {i} has no string {text_column!r}")
        answer = row.get("answer")
        tasks.append({"id": str(row.get("id", i)), "question": question,
                      "prompt": template.format(question=question),
                      "answer": None if answer is None else str(answer),
                      "image": _image_bytes(row["image"], path, i)})
    if not tasks:
        raise ValueError(f"dataset {path} is empty")
    return tasks
