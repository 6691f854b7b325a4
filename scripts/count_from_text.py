"""Can the embedded language model count at all? SmolLM2-135M-Instruct, text only, is told exactly
what MM-UPT's held-out shape images contain ("The image shows: red circle, blue square, red
triangle.") and asked their counting questions with the demo's template, 8 samples at temperature
0.7. If it cannot count from a perfect description, a vision tower in front of it cannot make it
count, and majority voting has no right answer to sharpen (docs/mmupt.md).

    python scripts/count_from_text.py [questions]
"""
from __future__ import annotations

import random
import sys
from collections import Counter


def shape_questions(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, answer) of MM-UPT's first ``n`` held-out ``shapes`` questions, the image replaced
    by the list of what it holds (the task id seeds its items, as in ``jobs/mmupt/data.py``)."""
    from actors.shapes import random_items
    from jobs.mmupt.config import MMUPTDataConfig
    from jobs.mmupt.data import shape_tasks
    d = MMUPTDataConfig()
    out = []
    for t in shape_tasks("heldout", n, seed, d.split_fractions, d.template):
        items = random_items(random.Random(t["id"]))
        out.append((f"The image shows: {', '.join(f'{c} {s}' for s, c in items)}.\n{t['prompt']}", t["answer"]))
    return out


def main(n: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.model_loading import resolve_model
    from jobs.srt.rewards import extract_answer
    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    pass1 = maj = 0.0
    questions = shape_questions(n)
    for prompt, answer in questions:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=0.7, max_new_tokens=16,
                                 num_return_sequences=8, pad_token_id=tok.pad_token_id)
        answers = [extract_answer(tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True))
                   for o in out]
        votes = Counter(a for a in answers if a is not None)
        pass1 += sum(a == answer for a in answers) / len(answers)
        maj += bool(votes) and votes.most_common(1)[0][0] == answer
    common, count = Counter(a for _, a in questions).most_common(1)[0]
    print(f"smollm2-135m-instruct, told what each image holds, {n} held-out counting questions: "
          f"pass@1 {pass1 / n:.3f}, maj@8 {maj / n:.3f}; always answering {common}: {count / n:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 24)
