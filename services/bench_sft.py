"""``evoray bench sft``: what a fine-tuning step costs with the frozen layers run every step and with
their output kept per row (``actors/frozen_layers.py``), on the embedded model.

Rows are random token ids of UI-Genie-like lengths (prompts of ``--prompt-tokens`` MIN MAX, short
replies); each way runs ``--epochs`` shuffled epochs of ``sft_step`` at ``--batch`` rows from the
same start, and the table gives the seconds per step of the first epoch (the kept bottom is
computed there) and of the later ones, and how far apart the two ways' final losses are.

    evoray bench sft [--rows 24] [--trainable-layers 10] [--epochs 3]
"""
from __future__ import annotations

import platform
import random
import time
from datetime import datetime, timezone


def add_args(p) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=[125, 403], metavar=("MIN", "MAX"))
    p.add_argument("--reply-tokens", type=int, nargs=2, default=[8, 20], metavar=("MIN", "MAX"))
    p.add_argument("--trainable-layers", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)


def _steps(model, rows, args, frozen) -> tuple[list[float], list[float]]:
    """Seconds and loss of each step over the epochs."""
    import torch

    from actors.sft import plan, sft_step
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    seconds, losses = [], []
    for epoch in plan(len(rows), args.epochs, args.batch, random.Random(0)):
        for idx in epoch:
            t0 = time.perf_counter()
            losses.append(sft_step(model, opt, [rows[i] for i in idx], 0, 1, 0, 1 << 20, 1.0, frozen=frozen))
            seconds.append(time.perf_counter() - t0)
    return seconds, losses


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from actors.frozen_layers import FrozenBottom, frozen_depth
    from actors.learner import freeze_below
    from actors.logprobs import Sample
    from actors.model_loading import load_policy
    from services.bench import write_result
    if args.epochs < 2:
        raise ValueError("--epochs must be at least 2: the kept bottom pays off from the second epoch")
    console = Console()
    per_epoch = -(-args.rows // args.batch)
    result_rows, rows = [], None
    for kept in (False, True):
        torch.manual_seed(0)
        model, _, _ = load_policy(args.model, "float32", "cpu")
        rng, vocab = random.Random(0), model.config.vocab_size      # ids 0-2: specials in small vocabularies
        rows = rows or [Sample([rng.randrange(3, vocab) for _ in range(rng.randint(*args.prompt_tokens))],
                               [rng.randrange(3, vocab) for _ in range(rng.randint(*args.reply_tokens))], 1.0)
                        for _ in range(args.rows)]
        freeze_below(model, args.trainable_layers)
        model.train()
        depth = frozen_depth(model)
        if not depth:
            raise ValueError(f"--trainable-layers {args.trainable_layers} leaves no layer of {args.model} frozen")
        console.print(f"{'kept' if kept else 'full'} bottom: {args.epochs} epochs × {per_epoch} steps …")
        seconds, losses = _steps(model, rows, args, FrozenBottom(model, depth) if kept else None)
        first, later = seconds[:per_epoch], seconds[per_epoch:]
        result_rows.append({"bottom": "kept" if kept else "full", "frozen_layers": depth,
                            "first_epoch_s_per_step": sum(first) / len(first),
                            "later_s_per_step": sum(later) / len(later), "final_loss": losses[-1]})
    full, kept = result_rows
    table = Table(title=f"SFT steps of {args.model}: {args.rows} rows, top {args.trainable_layers} layers trained")
    for col in ("bottom", "epoch 1 s/step", "later s/step", "later vs full", "final loss"):
        table.add_column(col, justify="right")
    for r in result_rows:
        table.add_row(r["bottom"], f"{r['first_epoch_s_per_step']:.2f}", f"{r['later_s_per_step']:.2f}",
                      f"{r['later_s_per_step'] / full['later_s_per_step']:.0%}", f"{r['final_loss']:.5f}")
    console.print(table)
    result = {"benchmark": "sft", "date": datetime.now(timezone.utc).isoformat(), "model": args.model,
              "rows": args.rows, "prompt_tokens": args.prompt_tokens, "batch": args.batch,
              "epochs": args.epochs, "trainable_layers": args.trainable_layers, "host": platform.node(),
              "cpus": torch.get_num_threads(), "results": result_rows,
              "final_loss_gap": abs(full["final_loss"] - kept["final_loss"])}
    console.print(f"wrote {write_result(args.out, 'sft', result)}")
    return 0
