"""Unit tests for jobs/srt/data.py."""
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.srt.data import LEVELS, arithmetic_tasks, load_tasks

FRACTIONS = {"train": 0.6, "val": 0.1, "heldout": 0.3}
TEMPLATE = "What is {question}? Answer with just the number."


def tasks(level, split, limit=100_000, seed=0, template=TEMPLATE):
    return arithmetic_tasks(level, split, limit, seed, FRACTIONS, template)


# --- arithmetic tasks ---------------------------------------------------------------------------

# problems per level: operand range sizes × number of operators
#   1: 10·10·1 = 100; 2: 90·10·2 = 1800; 3: 90·90·2 = 16200; 4: 11·11·1 = 121; 5: 90·8·1 = 720
SIZES = {1: 100, 2: 1800, 3: 16200, 4: 121, 5: 720}


@pytest.mark.parametrize("level", sorted(SIZES))
def test_splits_are_disjoint_and_cover_all_problems(level):
    ids = {split: [t["id"] for t in tasks(level, split)] for split in FRACTIONS}
    for split, got in ids.items():
        assert len(got) == len(set(got)), f"duplicates in {split}"
    train, val, held = (set(ids[s]) for s in ("train", "val", "heldout"))
    assert not train & val and not train & held and not val & held
    assert len(train) + len(val) + len(held) == SIZES[level]


def test_split_sizes_roughly_follow_fractions():
    # level 3 has 16200 problems: expect about 9720 / 1620 / 4860
    n = {split: len(tasks(3, split)) for split in FRACTIONS}
    assert abs(n["train"] / 16200 - 0.6) < 0.03
    assert abs(n["val"] / 16200 - 0.1) < 0.03
    assert abs(n["heldout"] / 16200 - 0.3) < 0.03


def test_deterministic_and_seeded_order():
    a = tasks(2, "train", limit=50, seed=1)
    assert a == tasks(2, "train", limit=50, seed=1)
    full1, full2 = tasks(2, "train", seed=1), tasks(2, "train", seed=2)
    # a different seed changes the order but not the split's membership
    assert {t["id"] for t in full1} == {t["id"] for t in full2}
    assert [t["id"] for t in full1] != [t["id"] for t in full2]
    # the limit takes a prefix of the seeded order
    assert a == full1[:50]


def test_limit():
    assert len(tasks(3, "train", limit=7)) == 7
    assert tasks(1, "train", limit=0) == []


def test_answers_are_correct():
    pattern = re.compile(r"What is (\d+) ([+\-*]) (\d+)\? Answer with just the number\.")
    for level in LEVELS:
        (lo1, hi1), (lo2, hi2), ops = LEVELS[level]
        for split in FRACTIONS:
            for t in tasks(level, split, limit=200):
                a, op, b = pattern.fullmatch(t["prompt"]).groups()
                a, b = int(a), int(b)
                assert lo1 <= a <= hi1 and lo2 <= b <= hi2 and op in ops
                assert t["id"] == f"L{level}:{a}{op}{b}"
                expected = a + b if op == "+" else a - b if op == "-" else a * b
                assert t["answer"] == str(expected)


def test_specific_hand_answers():
    # every problem of a level lands in exactly one split, so look across all three
    everything = {t["id"]: t for s in FRACTIONS for lvl in (1, 2, 4, 5) for t in tasks(lvl, s)}
    assert everything["L1:3+4"]["answer"] == "7"
    assert everything["L1:9+9"]["answer"] == "18"
    assert everything["L1:0+0"]["answer"] == "0"
    assert everything["L2:15-9"]["answer"] == "6"
    assert everything["L2:99+9"]["answer"] == "108"
    assert everything["L4:12*12"]["answer"] == "144"
    assert everything["L4:7*8"]["answer"] == "56"
    assert everything["L5:99*9"]["answer"] == "891"
    assert everything["L1:3+4"]["prompt"] == "What is 3 + 4? Answer with just the number."


def test_template():
    t = tasks(1, "train", limit=1, template="Q: {question} =")[0]
    assert re.fullmatch(r"Q: \d \+ \d =", t["prompt"])


@pytest.mark.parametrize("level", [0, 6, -1])
def test_level_validation(level):
    with pytest.raises(ValueError, match=r"data\.level") as e:
        tasks(level, "train")
    assert str(level) in str(e.value)


# --- user datasets ------------------------------------------------------------------------------

def test_load_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["1+1", "2+2", "3+3"],
                             "answer": [2, None, 6]}), path)
    got = load_tasks(path)
    assert got == [{"id": "a", "prompt": "1+1", "answer": "2"},
                   {"id": "b", "prompt": "2+2", "answer": None},
                   {"id": "c", "prompt": "3+3", "answer": "6"}]
    # a string path works too, and the template formats {question}
    got = load_tasks(str(path), template="Q: {question}?")
    assert [t["prompt"] for t in got] == ["Q: 1+1?", "Q: 2+2?", "Q: 3+3?"]


def test_load_parquet_without_id_or_answer(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"]}), path)
    # ids default to the row index as a string; no answer column → None
    assert load_tasks(path) == [{"id": "0", "prompt": "x", "answer": None},
                                {"id": "1", "prompt": "y", "answer": None}]


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": 2, "id": 7}\n   \n')
    # blank lines are skipped; ids: row index 0, then the given 7 → "7"; answer 2 → "2"
    assert load_tasks(path) == [{"id": "0", "prompt": "a", "answer": "1"},
                                {"id": "7", "prompt": "b", "answer": "2"}]


def test_load_json_suffix_is_read_as_jsonl(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert load_tasks(path) == [{"id": "0", "prompt": "p", "answer": None}]


def test_parquet_without_prompt_column(tmp_path):
    path = tmp_path / "noprompt.parquet"
    pq.write_table(pa.table({"question": ["1+1"], "answer": ["2"]}), path)
    with pytest.raises(ValueError) as e:
        load_tasks(path)
    msg = str(e.value)
    assert str(path) in msg and "prompt" in msg
    assert "question" in msg  # lists the columns it does have


def test_jsonl_without_prompt_column(tmp_path):
    path = tmp_path / "noprompt.jsonl"
    path.write_text('{"question": "1+1"}\n')
    with pytest.raises(ValueError) as e:
        load_tasks(path)
    assert str(path) in str(e.value) and "prompt" in str(e.value)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="empty") as e:
        load_tasks(path)
    assert str(path) in str(e.value) and "prompt" in str(e.value)


def test_row_without_string_prompt(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    with pytest.raises(ValueError, match=r"row 1") as e:
        load_tasks(path)
    assert str(path) in str(e.value)
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"row 1"):
        load_tasks(path)


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    # line 1 fine, line 2 blank, line 3 broken
    path.write_text('{"prompt": "a"}\n\n{"prompt": oops}\n{"prompt": "c"}\n')
    with pytest.raises(ValueError) as e:
        load_tasks(path)
    assert f"{path}:3:" in str(e.value)
    assert "JSON" in str(e.value)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt\n1+1\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'") as e:
        load_tasks(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError) as e:
        load_tasks(path)
    assert str(path) in str(e.value)


# --- file datasets: every row unless data.n_* limits it; generated ones keep their sizes --------

def write_parquet(path, n, answers=True):
    import pyarrow as pa
    rows = [{"id": f"q{i}", "prompt": f"question {i}", **({"answer": str(i)} if answers else {})} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_file_dataset_uses_every_row_by_default(tmp_path):
    from jobs.srt.config import SRTConfig
    from jobs.srt.splits import build_splits, describe_splits
    cfg = SRTConfig.model_validate({"data": {"source": str(write_parquet(tmp_path / "t.parquet", 500, False)),
                                             "heldout_source": str(write_parquet(tmp_path / "h.parquet", 100))}})
    splits = build_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.heldout)) == (500, 0, 100)
    assert splits.train[0]["prompt"] == "question 0"            # no template asked for: as written
    assert describe_splits(cfg, splits) == "data: 500 train, 0 val, 100 heldout rows (every row of each file, prompts as written)"
    limited = SRTConfig.model_validate({"data": {**cfg.data.model_dump(), "n_train": 50, "template": "Q: {question}"}})
    splits = build_splits(limited)
    assert len(splits.train) == 50 and splits.train[0]["prompt"] == "Q: question 0"
    assert "data.n_train=50" in describe_splits(limited, splits)


def test_generated_dataset_keeps_its_default_sizes():
    from jobs.srt.config import SRTConfig
    from jobs.srt.splits import build_splits
    splits = build_splits(SRTConfig.model_validate({"data": {"level": 3}}))   # level 1 has only 100 problems
    assert (len(splits.train), len(splits.val), len(splits.heldout)) == (64, 16, 32)
    assert splits.train[0]["prompt"].startswith("What is ")


def test_an_epoch_of_steps_visits_every_training_row(tmp_path):
    """``batch_for`` walks the whole (500-row) training split once per epoch."""
    from types import SimpleNamespace

    from jobs.srt.config import SRTConfig
    from jobs.srt.loop import LoopState, SRTLoop
    from jobs.srt.splits import build_splits
    cfg = SRTConfig.model_validate({"data": {"source": str(write_parquet(tmp_path / "t.parquet", 500, False)),
                                             "heldout_source": str(write_parquet(tmp_path / "h.parquet", 4))},
                                    "train": {"prompts_per_step": 50}})
    splits = build_splits(cfg)
    loop = SimpleNamespace(cfg=cfg, splits=splits, state=LoopState(train_ids=[t["id"] for t in splits.train]))
    seen = [t["id"] for step in range(1, 11) for t in SRTLoop.batch_for(loop, step)]
    assert sorted(seen) == sorted(t["id"] for t in splits.train)
