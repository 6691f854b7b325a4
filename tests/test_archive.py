"""jobs.dgm.archive: the DGM archive file, lineage, and patches that git apply accepts."""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.dgm.selection import Candidate
from jobs.dgm.archive import (ARCHIVE_SCHEMA, Archive, ArchiveRow, PatchError, apply_patch,
                              make_patch)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
CONTRACT = [("agent_id", pa.string()), ("parent_id", pa.string()), ("generation", pa.int64()),
            ("status", pa.string()), ("score", pa.float64()), ("stage", pa.string()),
            ("n_tasks", pa.int64()), ("patch", pa.string()),
            ("created", pa.timestamp("us", tz="UTC"))]


def row(aid, parent, gen, status="admitted", score=0.5, patch="", i=0, **kw) -> ArchiveRow:
    return ArchiveRow(aid, parent, gen, status, score, "stage1", 10, patch,
                      created=T0 + timedelta(seconds=i), **kw)


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- patches -------------------------------------------------------------------------------------

OLD = {"pkg/m.py": "x = 1\ny = 2\nz = 3\n", "gone.txt": "bye\n", "empty_gone.txt": "",
       "nonl.txt": "no newline", "to_nonl.txt": "a\nb\n", "to_empty.txt": "keep\n",
       "from_empty.txt": "", "crlf.txt": "a\r\nb\r\n", "same.txt": "same\n",
       "weird.txt": "form\x0cfeed\x1csep\n"}
NEW = {"pkg/m.py": "x = 1\ny = 20\nz = 3\n", "pkg/new.py": "print('hi')\n", "empty_new.txt": "",
       "nonl.txt": "no newline, changed", "to_nonl.txt": "a\nb", "to_empty.txt": "",
       "from_empty.txt": "now\n", "crlf.txt": "a\r\nc\r\n", "same.txt": "same\n",
       "new_nonl.txt": "tail", "weird.txt": "form\x0cfeed\x1csep!\n"}


@pytest.mark.parametrize("names", [list(NEW)] + [[n] for n in NEW] + [[n] for n in OLD])
def test_patch_round_trip(tmp_path, names):
    old = write_tree(tmp_path / "old", {k: v for k, v in OLD.items() if k in names or k not in NEW})
    new = write_tree(tmp_path / "new", {k: v for k, v in NEW.items() if k in names})
    for k, v in OLD.items():   # files outside `names` stay as they were
        if k not in names and k not in NEW:
            (new / k).write_text(v)
    patch = make_patch(old, new)
    work = tmp_path / "work"
    shutil.copytree(old, work)
    apply_patch(work, patch)
    assert tree(work) == tree(new)


def test_patch_headers_and_markers(tmp_path):
    old = write_tree(tmp_path / "old", OLD)
    new = write_tree(tmp_path / "new", NEW)
    patch = make_patch(old, new)
    assert "--- a/pkg/m.py\n+++ b/pkg/m.py\n" in patch
    assert "diff --git a/pkg/new.py b/pkg/new.py\nnew file mode 100644\n--- /dev/null\n" in patch
    assert "deleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n" in patch
    assert "diff --git a/empty_new.txt b/empty_new.txt\nnew file mode 100644\ndiff" in patch
    assert "+tail\n\\ No newline at end of file\n" in patch
    assert "same.txt" not in patch
    assert make_patch(old, old) == ""


def test_patch_skips_caches_dotdirs_and_binaries(tmp_path):
    old = write_tree(tmp_path / "old", {"a.py": "a\n"})
    new = write_tree(tmp_path / "new", {"a.py": "a\n", "__pycache__/a.cpython-311.pyc": b"\0x",
                                        "b.pyc": "x", ".git/config": "x\n", "x/.hidden/y": "y\n",
                                        "blob.bin": b"\x00\x01\x02", "latin.txt": b"\xe9t\xe9\n"})
    assert make_patch(old, new) == ""


def test_patch_mode_change(tmp_path):
    old = write_tree(tmp_path / "old", {"run.sh": "echo hi\n"})
    new = write_tree(tmp_path / "new", {"run.sh": "echo hi\n"})
    os.chmod(new / "run.sh", 0o755)
    patch = make_patch(old, new)
    assert "old mode 100644\nnew mode 100755\n" in patch
    work = tmp_path / "work"
    shutil.copytree(old, work)
    apply_patch(work, patch)
    assert os.access(work / "run.sh", os.X_OK)


def test_apply_patch_failure_is_clear_and_atomic(tmp_path):
    old = write_tree(tmp_path / "old", {"a.txt": "one\n", "b.txt": "two\n"})
    new = write_tree(tmp_path / "new", {"a.txt": "ONE\n", "b.txt": "TWO\n"})
    patch = make_patch(old, new)
    work = write_tree(tmp_path / "work", {"a.txt": "one\n", "b.txt": "something else\n"})
    with pytest.raises(PatchError, match="b.txt"):
        apply_patch(work, patch)
    assert (work / "a.txt").read_text() == "one\n"   # all or nothing
    apply_patch(work, "")                              # an empty patch is a no-op


# --- the archive file ----------------------------------------------------------------------------

def three_levels(path: Path) -> Archive:
    arc = Archive(path)
    arc.add(row("initial", None, 0, score=0.2, i=0))
    arc.add(row("a1", "initial", 1, score=0.4, i=1, attempt=0))
    arc.add(row("a2", "initial", 1, status="rejected", score=0.0, i=2, attempt=1, detail="empty"))
    arc.add(row("b1", "a1", 2, score=0.6, i=3, attempt=2))
    arc.add(row("b2", "a1", 2, status="error", score=0.0, i=4, attempt=3, detail="crash"))
    arc.add(row("c1", "b1", 3, score=0.7, i=5, attempt=4, n_solved=7, wall_s=12.5))
    return arc


def test_lineage_children_candidates(tmp_path):
    arc = three_levels(tmp_path / "archive.parquet")
    assert arc.lineage("c1") == ["initial", "a1", "b1", "c1"]
    assert arc.lineage("b2") == ["initial", "a1", "b2"]
    assert arc.lineage("initial") == ["initial"]
    assert arc.children_count("initial") == 1   # a2 was rejected: not counted
    assert arc.children_count("a1") == 1        # b2 errored: not counted
    assert [r.agent_id for r in arc.admitted()] == ["initial", "a1", "b1", "c1"]
    assert arc.candidates() == [Candidate("initial", 0.2, 1), Candidate("a1", 0.4, 1),
                                Candidate("b1", 0.6, 1), Candidate("c1", 0.7, 0)]
    assert arc.get("b2").detail == "crash"
    with pytest.raises(KeyError):
        arc.get("nope")


def test_round_trip_schema_exact(tmp_path):
    path = tmp_path / "archive.parquet"
    arc = three_levels(path)
    schema = pq.read_schema(path)
    assert [(f.name, f.type) for f in schema][:len(CONTRACT)] == CONTRACT
    assert schema.equals(ARCHIVE_SCHEMA)
    assert [f.name for f in schema][len(CONTRACT):] == ["n_solved", "attempt", "wall_s", "detail"]
    loaded = Archive.load(path)
    assert loaded.rows == arc.rows
    assert loaded.get("initial").parent_id is None and loaded.get("initial").attempt is None
    assert loaded.get("c1").created == T0 + timedelta(seconds=5)


def test_empty_and_null_only_columns_keep_types(tmp_path):
    assert len(Archive.load(tmp_path / "missing.parquet")) == 0
    arc = Archive(tmp_path / "archive.parquet")
    arc.add(row("initial", None, 0))          # parent_id and attempt: null only
    assert pq.read_schema(arc.path).equals(ARCHIVE_SCHEMA)
    arc._write([])                            # no rows at all
    assert pq.read_table(arc.path).schema.equals(ARCHIVE_SCHEMA)


def test_duplicate_id_and_bad_status(tmp_path):
    arc = three_levels(tmp_path / "archive.parquet")
    with pytest.raises(ValueError, match="already in the archive"):
        arc.add(row("b1", "a1", 2))
    assert len(Archive.load(arc.path)) == 6
    with pytest.raises(ValueError, match="status"):
        row("x", None, 0, status="maybe")


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "archive.parquet"
    arc = three_levels(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        arc.add(row("d1", "c1", 4))
    assert path.read_bytes() == before
    assert "d1" not in arc and len(arc) == 6
    assert sorted(os.listdir(tmp_path)) == ["archive.parquet"]   # no temporary file left
    monkeypatch.undo()
    arc.add(row("d1", "c1", 4))
    assert Archive.load(path).lineage("d1")[-2:] == ["c1", "d1"]


def test_materialize_applies_lineage(tmp_path):
    seed = write_tree(tmp_path / "seed", {"agent.py": "v = 0\n", "tools/bash.py": "pass\n"})
    s1 = write_tree(tmp_path / "s1", {"agent.py": "v = 1\n", "tools/bash.py": "pass\n"})
    s2 = write_tree(tmp_path / "s2", {"agent.py": "v = 1\n", "tools/edit.py": "edit\n"})
    arc = Archive(tmp_path / "archive.parquet")
    arc.add(row("initial", None, 0))
    arc.add(row("a", "initial", 1, patch=make_patch(seed, s1)))
    arc.add(row("b", "a", 2, patch=make_patch(s1, s2)))
    assert tree(arc.materialize("b", seed, tmp_path / "out_b")) == tree(s2)
    assert tree(arc.materialize("a", seed, tmp_path / "out_a")) == tree(s1)
    assert tree(arc.materialize("initial", seed, tmp_path / "out_0")) == tree(seed)
    arc2 = Archive(tmp_path / "bad.parquet")
    arc2.add(row("initial", None, 0))
    s3 = write_tree(tmp_path / "s3", {"agent.py": "v = 2\n", "tools/edit.py": "edit\n"})
    arc2.add(row("x", "initial", 1, patch=make_patch(s2, s3)))   # made against the wrong base
    with pytest.raises(PatchError, match="patch of 'x'"):
        arc2.materialize("x", seed, tmp_path / "out_x")
