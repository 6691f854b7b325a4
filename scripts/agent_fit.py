"""Does the agent fit its own seed data? Fine-tune SmolLM2-135M-Instruct in this process on a
UI-Genie run's generation-0 rows (``RUN_DIR/datasets/agent_gen0.parquet``) with the job's prompt,
reply prefix, loss and step (``actors/sft.py``), and after some epochs greedy-decode 48 of those
same training prompts: how many replies are exactly the reference, and how many choose the right
action kind (the decision; the rest of a reply is coordinates and boilerplate).

    python scripts/agent_fit.py RUN_DIR [--lr 2e-4] [--layers 10|all] [--epochs 6] [--batch 2]
                                        [--decision-weight 1]
"""
from __future__ import annotations

import argparse
import random
import time
from collections import Counter


def main() -> None:
    import pyarrow.parquet as pq
    import torch

    from actors.learner import freeze_below
    from actors.logprobs import Sample
    from actors.model_loading import load_policy, resolve_model
    from actors.sft import plan, sft_step
    from jobs.uigenie.policy import REPLY_PREFIX, SYSTEM_PROMPT, reply_kind
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--layers", default="10", help="trainable top layers, or 'all'")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--decision-weight", type=float, default=1.0,
                    help="the first reply token's weight in the loss (agent.decision_weight)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = pq.read_table(f"{args.run_dir}/datasets/agent_gen0.parquet").to_pylist()
    model, tok, _ = load_policy(resolve_model("smollm2-135m-instruct"), "float32", "cpu")
    if args.layers != "all":
        freeze_below(model, int(args.layers))

    def encode(prompt: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids) + tok.encode(REPLY_PREFIX, add_special_tokens=False)
    data = [Sample(encode(r["prompt"]), tok.encode(r["completion"], add_special_tokens=False)
                   + [tok.eos_token_id], 1.0) for r in rows]
    check = random.Random(1).sample(range(len(rows)), min(48, len(rows)))

    def evaluate(epoch: int) -> None:
        model.eval()
        exact = kind = 0
        wrong = Counter()
        with torch.no_grad():
            for i in check:
                out = model.generate(torch.tensor([data[i].prompt_ids]), max_new_tokens=32, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                reply = tok.decode(out[0][len(data[i].prompt_ids):], skip_special_tokens=True)
                want = rows[i]["completion"]
                exact += reply.strip() == want.strip()
                kind += reply_kind(reply) == reply_kind(want)
                if reply_kind(reply) != reply_kind(want):
                    wrong[(reply_kind(want), reply_kind(reply))] += 1
        model.train()
        print(f"epoch {epoch}: of {len(check)} training prompts, exact {exact}, right action kind {kind}; "
              f"wrong (wanted, wrote): {wrong.most_common(4)}", flush=True)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    start = time.monotonic()
    for epoch, steps in enumerate(plan(len(data), args.epochs, args.batch, random.Random(0)), 1):
        losses = [sft_step(model, opt, [data[i] for i in idx], 0, 1, tok.pad_token_id, 8192, 1.0,
                           first_weight=args.decision_weight) for idx in steps]
        print(f"epoch {epoch}: loss {sum(losses) / len(losses):.3f} ({time.monotonic() - start:.0f} s)", flush=True)
        if epoch % 2 == 0 or epoch == args.epochs:
            evaluate(epoch)


if __name__ == "__main__":
    main()
