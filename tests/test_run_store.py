"""services/run_store.py: metrics Parquet, events, samples and never-half-written checkpoints."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.run_store import METRICS_SCHEMA, RunStore, atomic_write, atomic_write_text, new_run_dir


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary files/directories left behind by an atomic write."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- metrics ----------------------------------------------------------------------------------

def test_metrics_parquet_has_the_exact_schema(tmp_path):
    store = RunStore(tmp_path)
    assert (tmp_path / "samples").is_dir() and (tmp_path / "checkpoints").is_dir()
    t0 = datetime.now(timezone.utc)
    store.log(0, {"reward": 1, "loss": 0.25})
    store.log(3, {"reward": 0.5, "skipped": None})
    store.flush_metrics()
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    assert table.schema == pa.schema([("step", pa.int64()), ("name", pa.string()),
                                      ("value", pa.float64()), ("time", pa.timestamp("us", tz="UTC"))])
    rows = table.to_pylist()
    assert [(r["step"], r["name"], r["value"]) for r in rows] == [(0, "reward", 1.0), (0, "loss", 0.25),
                                                                  (3, "reward", 0.5)]
    assert all(isinstance(r["value"], float) for r in rows)
    assert all(t0 <= r["time"] <= datetime.now(timezone.utc) for r in rows)
    assert store.metric_series("reward") == [(0, 1.0), (3, 0.5)]
    assert leftovers(tmp_path) == []


def test_empty_metrics_flush_writes_the_schema(tmp_path):
    store = RunStore(tmp_path)
    store.flush_metrics()
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.num_rows == 0 and table.schema.equals(METRICS_SCHEMA)


def test_metrics_survive_a_reopen_and_truncate_drops_later_steps(tmp_path):
    store = RunStore(tmp_path)
    for step in range(5):
        store.log(step, {"loss": step / 10, "reward": step})
    store.flush_metrics()
    reopened = RunStore(tmp_path)                 # a resumed run reads what was flushed
    assert reopened.metric_series("loss") == [(s, s / 10) for s in range(5)]
    reopened.truncate_metrics(2)
    assert reopened.metric_series("reward") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    on_disk = pq.read_table(tmp_path / "metrics.parquet")
    assert on_disk.schema.equals(METRICS_SCHEMA)
    assert sorted(set(on_disk.column("step").to_pylist())) == [0, 1, 2]
    assert on_disk.num_rows == 6
    reopened.log(3, {"loss": 9.0})                # redone work is appended after the cut
    reopened.flush_metrics()
    assert RunStore(tmp_path).metric_series("loss") == [(0, 0.0), (1, 0.1), (2, 0.2), (3, 9.0)]


# --- samples and events -----------------------------------------------------------------------

def test_write_samples_produces_readable_parquet(tmp_path):
    store = RunStore(tmp_path)
    rows = [{"prompt": "1+1", "completion": "2", "reward": 1.0, "tokens": [5, 6, 1]},
            {"prompt": "2+2", "completion": "5", "reward": 0.0, "tokens": [7]}]
    store.write_samples(12, rows)
    store.write_samples(12, rows[:1], prefix="heldout")
    store.write_samples(13, [])                   # nothing to write: no file
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["heldout_step000012.parquet", "train_step000012.parquet"]
    assert pq.read_table(tmp_path / "samples" / "train_step000012.parquet").to_pylist() == rows
    assert pq.read_table(tmp_path / "samples" / "heldout_step000012.parquet").num_rows == 1


def test_events_are_json_lines(tmp_path):
    store = RunStore(tmp_path)
    rec = store.event("checkpoint", 4, path=Path("/x/y"), value=0.5)
    store.event("resumed", 4)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {**rec, "path": "/x/y"}
    assert first["event"] == "checkpoint" and first["step"] == 4 and first["value"] == 0.5
    assert second["event"] == "resumed" and set(second) == {"event", "step", "time"}
    for r in (first, second):
        assert datetime.fromisoformat(r["time"]).tzinfo is not None


# --- atomic files -------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old")

    def broken(p: Path) -> None:
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


# --- checkpoints --------------------------------------------------------------------------------

def writer(content: str):
    def write(tmp: Path) -> None:
        (tmp / "learner").mkdir()
        (tmp / "learner" / "model.bin").write_text(content)
        (tmp / "loop_state.json").write_text(json.dumps({"content": content}))
    return write


def ckpt_names(store: RunStore) -> list[str]:
    return sorted(p.name for p in (store.root / "checkpoints").glob("step_*"))


def test_save_checkpoint_writes_step_dir_and_moves_latest(tmp_path):
    store = RunStore(tmp_path)
    assert store.latest_checkpoint() is None and store.best_checkpoint() is None
    path = store.save_checkpoint(0, writer("a"), keep=5)
    assert path == tmp_path / "checkpoints" / "step_000000" == store.checkpoint_dir(0)
    assert (path / "learner" / "model.bin").read_text() == "a"
    assert store.latest_checkpoint() == path
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000000"
    store.save_checkpoint(5, writer("b"), keep=5)
    assert store.latest_checkpoint() == store.checkpoint_dir(5)
    assert ckpt_names(store) == ["step_000000", "step_000005"]
    # saving a step again replaces it whole
    store.save_checkpoint(5, lambda tmp: (tmp / "only.txt").write_text("c"), keep=5)
    assert sorted(p.name for p in store.checkpoint_dir(5).iterdir()) == ["only.txt"]
    assert leftovers(tmp_path / "checkpoints") == []


def test_failed_checkpoint_write_leaves_nothing_half_written(tmp_path):
    store = RunStore(tmp_path)
    store.save_checkpoint(1, writer("good"), keep=3)

    def crash(tmp: Path) -> None:
        (tmp / "learner").mkdir()
        (tmp / "learner" / "model.bin").write_text("partial")
        raise RuntimeError("learner died mid-save")

    with pytest.raises(RuntimeError, match="mid-save"):
        store.save_checkpoint(2, crash, keep=3)
    assert not store.checkpoint_dir(2).exists()
    assert ckpt_names(store) == ["step_000001"]
    assert leftovers(tmp_path / "checkpoints") == [], "no temporary directories are left"
    assert store.latest_checkpoint() == store.checkpoint_dir(1)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000001"
    # re-saving an existing step that fails keeps the complete old one
    with pytest.raises(RuntimeError):
        store.save_checkpoint(1, crash, keep=3)
    assert (store.checkpoint_dir(1) / "learner" / "model.bin").read_text() == "good"
    assert leftovers(tmp_path / "checkpoints") == []


def test_keep_deletes_older_checkpoints_but_not_a_protected_best(tmp_path):
    store = RunStore(tmp_path)
    store.save_checkpoint(0, writer("0"), keep=2)
    store.mark_best(0)
    assert store.best_checkpoint() == store.checkpoint_dir(0)
    best = store.best_checkpoint().name
    store.save_checkpoint(1, writer("1"), keep=2, protect=(best,))
    store.save_checkpoint(2, writer("2"), keep=2, protect=(best,))
    store.save_checkpoint(3, writer("3"), keep=2, protect=(best,))
    # step 1 fell out of the last two; step 0 is the protected best
    assert ckpt_names(store) == ["step_000000", "step_000002", "step_000003"]
    assert (store.checkpoint_dir(0) / "learner" / "model.bin").read_text() == "0"
    store.mark_best(3)
    assert (tmp_path / "checkpoints" / "best").read_text() == "step_000003"
    store.save_checkpoint(4, writer("4"), keep=2, protect=(store.best_checkpoint().name,))
    assert ckpt_names(store) == ["step_000003", "step_000004"]
    assert store.latest_checkpoint() == store.checkpoint_dir(4)
    # without protection only the last `keep` remain
    store.save_checkpoint(5, writer("5"), keep=1)
    assert ckpt_names(store) == ["step_000005"]
    assert store.best_checkpoint() == store.checkpoint_dir(3) and not store.checkpoint_dir(3).exists()


def test_latest_pointer_to_a_missing_directory_is_none(tmp_path):
    store = RunStore(tmp_path)
    atomic_write_text(tmp_path / "checkpoints" / "latest", "step_000009")
    assert store.latest_checkpoint() is None


def test_new_run_dir_never_reuses_a_name(tmp_path):
    a = new_run_dir(tmp_path, "srt")
    a.mkdir()
    b = new_run_dir(tmp_path, "srt")
    assert a != b and not b.exists()
    assert a.name.startswith("srt-") and b.name.startswith("srt-")


def resumable_writer(content: str):
    """A checkpoint part with weights and a ``resume/`` folder (optimizer state)."""
    def write(tmp: Path) -> None:
        writer(content)(tmp)
        (tmp / "learner" / "resume").mkdir()
        (tmp / "learner" / "resume" / "trainer_state.pt").write_text(content)
    return write


def test_only_the_latest_checkpoint_keeps_its_resume_state(tmp_path):
    store = RunStore(tmp_path)
    for step in range(3):
        store.save_checkpoint(step, resumable_writer(str(step)), keep=3)
    has_resume = [(store.checkpoint_dir(s) / "learner" / "resume").exists() for s in range(3)]
    assert has_resume == [False, False, True]
    assert all((store.checkpoint_dir(s) / "learner" / "model.bin").read_text() == str(s) for s in range(3))
    store.drop_resume_state(store.latest_checkpoint())     # a finished run
    assert not (store.checkpoint_dir(2) / "learner" / "resume").exists()
    assert (store.checkpoint_dir(2) / "learner" / "model.bin").is_file()


def test_best_moving_off_an_old_step_prunes_it(tmp_path):
    """Step 0 is best while steps 1 and 2 are saved (protected beyond keep = 2); when step 2
    becomes best, step 0 goes: it is neither best nor among the newest two."""
    store = RunStore(tmp_path)
    store.save_checkpoint(0, writer("0"), keep=2)
    store.mark_best(0, keep=2)
    for step in (1, 2):
        store.save_checkpoint(step, writer(str(step)), keep=2, protect=(store.best_checkpoint().name,))
    assert ckpt_names(store) == ["step_000000", "step_000001", "step_000002"]
    store.mark_best(2, keep=2)
    assert ckpt_names(store) == ["step_000001", "step_000002"]
    store.mark_best(1, keep=1)                       # the best itself is never pruned
    assert ckpt_names(store) == ["step_000001", "step_000002"]
