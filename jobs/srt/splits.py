"""A prompt dataset's splits (train, val, held-out): generated, or read from the user's files —
every row of a file unless ``data.n_*`` limits it. No torch here: the CLI's checks build the
splits before Ray starts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from jobs.srt.config import ARITHMETIC_TEMPLATE, GENERATED_SIZES
from jobs.srt.data import arithmetic_tasks, load_tasks


@dataclass
class Splits:
    train: list[dict]
    val: list[dict]
    heldout: list[dict]


def limit(d, split: str, generated: bool) -> Optional[int]:
    """``data.n_SPLIT``; unset: all of a file, the default size of a generated dataset."""
    n = getattr(d, f"n_{split}")
    return GENERATED_SIZES[split] if n is None and generated else n


def generated_splits(d, make: Callable[[str, int], list[dict]]) -> Splits:
    """``make(split, limit)`` for each split of a generated dataset (``data.n_*`` tasks each)."""
    return Splits(*(make(split, limit(d, split, True)) for split in ("train", "val", "heldout")))


def file_splits(d, load: Callable[[str], list[dict]]) -> Splits:
    """The splits of a user's dataset: ``data.source``, ``val_source`` and the labelled
    ``heldout_source``, each read by ``load(path)``: every row, or the first ``data.n_*``."""
    if not d.heldout_source:
        raise ValueError("data.heldout_source: a file dataset needs a labelled held-out file")
    heldout = load(d.heldout_source)[:limit(d, "heldout", False)]
    if any(t["answer"] is None for t in heldout):
        raise ValueError(f"data.heldout_source: {d.heldout_source} has rows without an 'answer'")
    val = load(d.val_source)[:limit(d, "val", False)] if d.val_source else []
    return Splits(load(d.source)[:limit(d, "train", False)], val, heldout)


def build_splits(cfg) -> Splits:
    d = cfg.data
    if d.source == "arithmetic":
        return generated_splits(d, lambda split, n: arithmetic_tasks(
            d.level, split, n, cfg.train.seed, d.split_fractions, d.template or ARITHMETIC_TEMPLATE))
    return file_splits(d, lambda path: load_tasks(path, d.template))


def split_sizes(splits: Splits) -> dict[str, int]:
    return {"train": len(splits.train), "val": len(splits.val), "heldout": len(splits.heldout)}


def describe_splits(cfg, splits: Splits) -> str:
    """What the run trains and evaluates on, in a line: rows per split, and where they come from."""
    d = cfg.data
    sizes = ", ".join(f"{n} {split}" for split, n in split_sizes(splits).items())
    if not d.heldout_source:      # a generated dataset: file datasets need a held-out file
        return f"data: {sizes} ({d.source}, generated)"
    cut = [f"data.n_{s}={getattr(d, f'n_{s}')}" for s in ("train", "val", "heldout")
           if getattr(d, f"n_{s}") is not None]
    return (f"data: {sizes} rows (" + (", ".join(cut) if cut else "every row of each file")
            + (", template applied" if d.template else ", prompts as written") + ")")
