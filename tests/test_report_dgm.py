"""jobs.dgm.report: lineage and progress plots and the markdown section of a DGM run."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from jobs.dgm.archive import Archive, ArchiveRow
from jobs.dgm.report import (LINEAGE_PNG, PROGRESS_PNG, progress_series, tree_layout,
                                 write_dgm_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

# (agent, parent, generation, status, score)
ROWS = [("initial", None, 0, "admitted", 0.20), ("a1", "initial", 1, "admitted", 0.35),
        ("a2", "initial", 1, "rejected", 0.0), ("b1", "a1", 2, "admitted", 0.30),
        ("b2", "initial", 2, "admitted", 0.45), ("c1", "b2", 3, "error", 0.0),
        ("c2", "b2", 3, "admitted", 0.60), ("d1", "c2", 4, "admitted", 0.55)]


def make_archive(run_dir) -> Archive:
    arc = Archive(run_dir / "archive.parquet")
    for i, (aid, parent, gen, status, score) in enumerate(ROWS):
        arc.add(ArchiveRow(aid, parent, gen, status, score, "full" if score > 0.4 else "small",
                           60 if score > 0.4 else 10, "", created=T0 + timedelta(minutes=i),
                           attempt=None if parent is None else i - 1))
    return arc


def test_write_dgm_report(tmp_path):
    make_archive(tmp_path)
    images, md = write_dgm_report(tmp_path)
    assert images == {LINEAGE_PNG: True, PROGRESS_PNG: True}
    for name in images:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert "best agent: c2, score 0.600" in md
    assert "initial → b2 → c2" in md
    assert "admitted 6, rejected 1, error 1" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "agent" not in line]
    assert [line.split("|")[1].strip() for line in table] == ["c2", "d1", "b2", "a1", "b1",
                                                              "initial"]
    assert "| c2 | b2 | 3 | 0.600 | full | 60 |" in md
    assert f"![DGM lineage]({LINEAGE_PNG})" in md


def test_tree_layout_and_progress(tmp_path):
    rows = make_archive(tmp_path).rows
    pos = tree_layout(rows)
    assert {aid: g for aid, (_, g) in pos.items()} == {r[0]: float(r[2]) for r in ROWS}
    xs = {aid: x for aid, (x, _) in pos.items()}
    assert xs["a1"] == xs["b1"]                          # an only child sits under its parent
    assert xs["initial"] == (xs["a1"] + xs["b2"]) / 2    # centred over first and last child
    assert len(set(xs[a] for a in ("b1", "a2", "c1", "d1"))) == 4   # leaves never overlap
    order, best, size = progress_series(rows)
    assert order == list(range(1, 9))
    assert best == [0.2, 0.35, 0.35, 0.35, 0.45, 0.45, 0.6, 0.6]
    assert size == [1, 2, 2, 3, 4, 4, 5, 6]


def test_missing_or_empty_archive(tmp_path):
    images, md = write_dgm_report(tmp_path)
    assert images == {LINEAGE_PNG: False, PROGRESS_PNG: False} and "No archive" in md
    Archive(tmp_path / "archive.parquet")._write([])
    images, md = write_dgm_report(tmp_path)
    assert not any(images.values()) and "No admitted agents" in md
    assert not (tmp_path / LINEAGE_PNG).exists()
