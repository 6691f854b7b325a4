"""Which decisions has the UI-Genie agent learned? Its latest checkpoint in RUN_DIR, on its own
generation-0 training prompts (``RUN_DIR/datasets/agent_gen0.parquet``): per action kind of the
reference reply, how many greedy replies are exact and how many start with the right kind, and
the mean log-probability of the reference's first token (the kind) under teacher forcing.

    python scripts/agent_decisions.py RUN_DIR

Run it on a run stopped after generation 0 (``--set loop.generations=0``): later checkpoints have
also trained on what beam search found.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    import pyarrow.parquet as pq
    import torch

    from actors.logprobs import Sample, completion_logprobs
    from jobs.uigenie.bench_sampling import load_agent
    from jobs.uigenie.policy import REPLY_PREFIX, propose, reply_kind
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run = Path(sys.argv[1])
    rows = pq.read_table(run / "datasets" / "agent_gen0.parquet").to_pylist()
    sampler, _, agent = load_agent(run)
    replies = propose(sampler.generate, [r["prompt"] for r in rows], 1, 0.0, 32, seed=0)
    samples = [Sample(sampler.encode([{"role": "user", "content": r["prompt"]}], REPLY_PREFIX),
                      sampler.encode_reply(r["completion"]), 1.0) for r in rows]
    first = []
    with torch.no_grad():
        for i in range(0, len(samples), 8):
            logp, _ = completion_logprobs(sampler.backend.model, samples[i:i + 8],
                                          sampler.backend.tokenizer.pad_token_id, whole_sequences=True)
            first += logp[:, 0].tolist()
    by_kind = defaultdict(lambda: [0, 0, 0, 0.0])          # rows, exact, right kind, Σ first-token log-prob
    for r, (reply,), lp in zip(rows, replies, first):
        kind = reply_kind(r["completion"])
        k = by_kind[kind]
        k[0] += 1
        k[1] += reply.text == r["completion"]
        k[2] += reply_kind(reply.text) == kind
        k[3] += lp
    print(f"{agent}: {len(rows)} training prompts")
    print(f"{'kind':<12}{'rows':>6}{'exact':>7}{'right kind':>12}{'first-token logp':>18}")
    for kind, (n, exact, right, lp) in sorted(by_kind.items(), key=lambda x: -x[1][0]):
        print(f"{kind:<12}{n:>6}{exact:>7}{right:>12}{lp / n:>18.2f}")


if __name__ == "__main__":
    main()
