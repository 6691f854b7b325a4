"""Prompts: generated arithmetic tasks with difficulty levels, and user datasets (Parquet/JSONL).

Every task is a dict ``{"id": str, "prompt": str, "answer": str | None}``. Training code never
reads ``answer`` except in the labelled baseline; evaluation reads it on the held-out split.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow.parquet as pq

# level → (operand ranges, operators). Level 1 is one-digit addition, the SRT demo's task.
LEVELS = {
    1: ((0, 9), (0, 9), "+"),
    2: ((10, 99), (0, 9), "+-"),
    3: ((10, 99), (10, 99), "+-"),
    4: ((2, 12), (2, 12), "*"),
    5: ((10, 99), (2, 9), "*"),
}


def _split_of(key: str, fractions: dict[str, float]) -> str:
    """Deterministic split by hash, so a problem never lands in two splits."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, frac in fractions.items():
        edge += frac
        if u < edge:
            return name
    return list(fractions)[-1]


def arithmetic_tasks(level: int, split: str, limit: int, seed: int,
                     fractions: dict[str, float], template: str) -> list[dict]:
    """Up to ``limit`` distinct problems of ``level`` that hash into ``split`` (seeded order)."""
    if level not in LEVELS:
        raise ValueError(f"data.level: {level} is not one of {sorted(LEVELS)}")
    (lo1, hi1), (lo2, hi2), ops = LEVELS[level]
    problems = [(a, op, b) for a in range(lo1, hi1 + 1) for b in range(lo2, hi2 + 1) for op in ops]
    problems = [p for p in problems if _split_of(f"L{level}:{p}", fractions) == split]
    random.Random(seed).shuffle(problems)
    tasks = []
    for a, op, b in problems[:limit]:
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = f"{a} {op} {b}"
        tasks.append({"id": f"L{level}:{a}{op}{b}", "prompt": template.format(question=question),
                      "answer": str(answer)})
    return tasks


def load_tasks(path: str | Path, template: str | None = None) -> list[dict]:
    """Read a user dataset: Parquet or JSONL with a ``prompt`` column and an optional ``answer``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:     # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"dataset {path}: not a readable Parquet file ({' '.join(str(e).split())[:120]})") from None
    elif path.suffix in (".jsonl", ".json"):
        rows = []
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"dataset {path}: not a UTF-8 text file") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: a row must be a JSON object with a 'prompt'")
                rows.append(row)
    else:
        raise ValueError(f"dataset {path}: unsupported file type {path.suffix!r} (use .parquet or .jsonl)")
    if not rows or "prompt" not in rows[0]:
        raise ValueError(f"dataset {path} has no 'prompt' column"
                         + (f" (columns: {sorted(rows[0])})" if rows else " (it is empty)"))
    tasks = []
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"dataset {path}: row {i} has no string 'prompt'")
        answer = row.get("answer")
        prompt = template.format(question=row["prompt"]) if template else row["prompt"]
        tasks.append({"id": str(row.get("id", i)), "prompt": prompt,
                      "answer": None if answer is None else str(answer)})
    return tasks
