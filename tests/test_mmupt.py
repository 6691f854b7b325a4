"""MM-UPT: image datasets, the synthesis prompts, the filter (hand-made cases), and the synthesis
stage of the loop with a scripted sampler in place of the model."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.sampler import Completion
from jobs.mmupt.data import load_image_tasks, shape_tasks
from jobs.mmupt.loop import SYNTHETIC, MMUPTLoop, build_image_splits
from jobs.mmupt.synthesis import (Candidate, judge_answerable, parse_question, screen, similarity,
                                  synthesis_prompt)
from jobs.srt.rewards import exact_equal
from services.config import ConfigError, parse_config
from services.progress import StepProgress
from services.run_store import RunStore

FRACTIONS = {"train": 0.6, "val": 0.1, "heldout": 0.3}


# --- data --------------------------------------------------------------------------------------

def test_shape_tasks_are_deterministic_disjoint_and_decodable():
    from PIL import Image
    train = shape_tasks("train", 10, 0, FRACTIONS, "{question} Answer with just the number.", 64)
    again = shape_tasks("train", 10, 0, FRACTIONS, "{question} Answer with just the number.", 64)
    held = shape_tasks("heldout", 10, 0, FRACTIONS, "{question}", 64)
    assert [t["image"] for t in train] == [t["image"] for t in again]
    assert not {t["id"] for t in train} & {t["id"] for t in held}
    for t in train:
        assert t["prompt"] == f"{t['question']} Answer with just the number."
        assert 0 <= int(t["answer"]) <= 6
        if t["question"] == "How many shapes are in the image?":
            assert int(t["answer"]) >= 1
        assert Image.open(io.BytesIO(t["image"])).size == (64, 64)


def png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    return buf.getvalue()


def test_load_image_tasks_reads_bytes_and_hf_image_structs(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": png(), "question": "What colour?", "answer": "red"}]), plain)
    hf = tmp_path / "hf.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "x", "image": {"bytes": png(), "path": None},
                                          "prompt": "What colour?"}]), hf)
    a, = load_image_tasks(plain, "{question} One word.")
    b, = load_image_tasks(hf, "{question}")
    assert (a["id"], a["prompt"], a["answer"], a["image"]) == ("0", "What colour? One word.", "red", png())
    assert (b["id"], b["question"], b["answer"], b["image"]) == ("x", "What colour?", None, png())


def test_load_image_tasks_names_the_problem(tmp_path):
    no_image = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q?"}]), no_image)
    with pytest.raises(ValueError, match=r"a.parquet needs the columns 'image' and 'question'.*\['question'\]"):
        load_image_tasks(no_image, "{question}")
    empty_image = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": png(), "question": "q?"},
                                         {"image": b"", "question": "q?"}]), empty_image)
    with pytest.raises(ValueError, match="b.parquet: row 1 has no image bytes"):
        load_image_tasks(empty_image, "{question}")
    with pytest.raises(ValueError, match=r"\.parquet files"):
        (tmp_path / "c.jsonl").write_text("{}")
        load_image_tasks(tmp_path / "c.jsonl", "{question}")


def test_file_dataset_needs_a_labelled_heldout_file(tmp_path):
    data = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": png(), "question": "q?"}]), data)
    cfg = parse_config({"job": "mmupt", "data": {"source": str(data)}})
    with pytest.raises(ValueError, match="data.heldout_source"):
        build_image_splits(cfg)
    cfg = parse_config({"job": "mmupt", "data": {"source": str(data), "heldout_source": str(data)}})
    with pytest.raises(ValueError, match="rows without an 'answer'"):
        build_image_splits(cfg)


def test_config_rejects_synthetic_training_without_modes_and_unknown_keys():
    with pytest.raises(ConfigError, match="synthesis: .*train_on: synthetic needs at least one"):
        parse_config({"job": "mmupt", "synthesis": {"train_on": "synthetic"}})
    with pytest.raises(ConfigError, match="synthesis.per_imag: unknown key"):
        parse_config({"job": "mmupt", "synthesis": {"per_imag": 2}})
    with pytest.raises(ConfigError, match="synthesis.modes.0"):
        parse_config({"job": "mmupt", "synthesis": {"modes": ["indirect"]}})


# --- synthesis prompts, parsing, the filter ------------------------------------------------------

def test_synthesis_prompts():
    p = synthesis_prompt("in_context", "How many circles are there?", "3")
    assert "Question: How many circles are there?\nAnswer: 3\n" in p and "new question" in p
    assert "Write one question about this image" in synthesis_prompt("direct")
    with pytest.raises(ValueError, match="needs the original question and its answer"):
        synthesis_prompt("in_context", "q?", None)
    with pytest.raises(ValueError, match="unknown synthesis mode 'other'"):
        synthesis_prompt("other")


@pytest.mark.parametrize("reply, question", [
    ("What colour is the circle?", "What colour is the circle?"),
    ("Question: How many squares are there? The answer is 3.", "How many squares are there?"),
    ("1. New question: What shape is red?", "What shape is red?"),
    ('"How many blue shapes are in the image?"', "How many blue shapes are in the image?"),
    ("Sure!\n**Q2:** Which shape is the largest?\nAnswer: the square", "Which shape is the largest?"),
    ("There are three circles.", None),
    ("Why?", None),                                    # fewer than 3 words
    ("How " + "very " * 60 + "many?", None),            # longer than 200 characters
    ("", None),
])
def test_parse_question(reply, question):
    assert parse_question(reply) == question


def test_similarity_is_word_jaccard():
    assert similarity("How many circles are there?", "how many circles are there") == 1.0
    assert similarity("How many circles are there?", "How many squares are there?") == pytest.approx(4 / 6)
    assert similarity("What colour?", "Which shape?") == 0.0


def test_screen_marks_malformed_and_duplicates_per_image():
    originals = {"a": "How many shapes are in the image?", "b": "How many circles are there?"}
    cands = [Candidate("a", "direct", "How many shapes are in the image?"),       # the original again
             Candidate("a", "direct", "What colour is the square?"),
             Candidate("a", "in_context", "what colour is the square ?"),          # the one before
             Candidate("a", "direct", "no question here"),
             Candidate("b", "direct", "What colour is the square?"),               # other image: fine
             Candidate("b", "direct", "How many red circles are there?")]          # 5/6 ≥ 0.8 of b's original
    pending = screen(cands, originals, max_similarity=0.8)
    assert [c.status for c in cands] == ["duplicate", "pending", "duplicate", "malformed", "pending", "duplicate"]
    assert pending == [cands[1], cands[4]]
    assert cands[3].question is None and cands[1].question == "What colour is the square?"


def test_judge_answerable():
    kept = judge_answerable(Candidate("a", "direct", ""), ["3", "3", "4", None], 0.5, exact_equal)
    assert (kept.status, kept.majority, kept.share) == ("kept", "3", 0.5)
    spread = judge_answerable(Candidate("a", "direct", ""), ["3", "4", None, None], 0.5, exact_equal)
    assert (spread.status, spread.majority, spread.share) == ("unanswerable", "3", 0.25)
    silent = judge_answerable(Candidate("a", "direct", ""), [None] * 4, 0.25, exact_equal)
    assert (silent.status, silent.majority) == ("unanswerable", None)


# --- the synthesis stage with a scripted sampler ------------------------------------------------

class ScriptedRoles:
    """Replies by prompt: synthesis prompts get the next scripted reply; a question about circles
    gets a consistent answer, any other question scattered ones. Records what it was asked."""
    graders = []

    def __init__(self, replies: list[str]):
        self.replies, self.calls = iter(replies), []

    def generate(self, prompts, params):
        self.calls.append(prompts)
        out = []
        for i, p in enumerate(prompts):
            assert isinstance(p, dict) and p["image"], "every MM-UPT prompt carries its image"
            for j in range(params.n):
                if p["text"].startswith(("Here is a question", "Write one question")):
                    text = next(self.replies)
                elif "circle" in p["text"]:
                    text = "3"
                else:
                    text = str(j)
                out.append(Completion(i, [1], [2], [-0.1], text, True, 0))
        return out


def make_loop(tmp_path, replies, **synthesis):
    cfg = parse_config({"job": "mmupt", "data": {"n_train": 2, "n_val": 0, "n_heldout": 1},
                        "synthesis": {"modes": ["direct"], "per_image": 2, "check_samples": 4,
                                      "min_share": 0.5, **synthesis}})
    roles = ScriptedRoles(replies)
    return MMUPTLoop(cfg, roles, RunStore(tmp_path), StepProgress(), lambda values: None), roles


def test_synthesis_stage_keeps_answerable_new_questions_with_their_images(tmp_path):
    replies = ["Question: How many circles are on the left?",    # image 0: kept (answers agree)
               "Nothing to ask.",                                # image 0: malformed
               "What colour is the biggest shape?",              # image 1: unanswerable (answers scatter)
               "How many circles are on the left?"]              # image 1: kept (another image)
    loop, roles = make_loop(tmp_path, replies)
    originals = [dict(t) for t in loop.splits.train]
    loop.synthesize()
    rows = pq.read_table(tmp_path / SYNTHETIC).to_pylist()
    assert [r["status"] for r in rows] == ["kept", "malformed", "unanswerable", "kept"]
    assert [r["source_id"] for r in rows] == [originals[0]["id"]] * 2 + [originals[1]["id"]] * 2
    assert rows[0]["majority"] == "3" and rows[0]["share"] == 1.0 and rows[2]["share"] == 0.25
    assert rows[0]["prompt"] == "How many circles are on the left? Answer with just the number."
    added = loop.splits.train[len(originals):]
    assert [t["question"] for t in added] == ["How many circles are on the left?"] * 2
    assert [t["image"] for t in added] == [originals[0]["image"], originals[1]["image"]]
    assert all(t["answer"] is None for t in added)
    assert {m["name"]: m["value"] for m in loop.store._metrics}["synthesis/kept"] == 2.0
    # a resumed run adopts the same questions without writing them again
    fresh, fresh_roles = make_loop(tmp_path, [])
    fresh.load_synthetic()
    assert [t["id"] for t in fresh.splits.train] == [t["id"] for t in loop.splits.train]
    assert fresh_roles.calls == []


def test_in_context_shows_the_majority_answer_and_synthetic_only_training(tmp_path):
    replies = ["How many circles are in the top row?"] * 4
    loop, roles = make_loop(tmp_path, replies, modes=["in_context"], train_on="synthetic",
                            seed_answers="vote")
    for task, question in zip(loop.splits.train, ["How many circles are there?",   # votes agree on "3"
                                                   "How many shapes are there?"]):  # one vote each
        task.update(question=question, prompt=question)
    loop.synthesize()
    first_asks = [p["text"] for p in roles.calls[1]]                    # calls[0]: the votes
    assert len(first_asks) == 2 and "Answer: 3\n" in first_asks[0]     # all four votes say 3
    assert "Question: How many shapes are there?\nAnswer: 0\n" in first_asks[1]   # a tie: the first seen
    assert all("/syn" in t["id"] for t in loop.splits.train)
    assert {t["question"] for t in loop.splits.train} == {"How many circles are in the top row?"}
