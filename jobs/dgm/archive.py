"""The DGM archive, ``RUN_DIR/archive.parquet``: one row per agent (docs/architecture.md, "DGM archive
row"), and the patches that turn a parent's source into its child's.

Every agent is stored as a unified diff against its parent; an agent's source is the seed
directory with the patches along its lineage applied root first (:meth:`Archive.materialize`).
The file is rewritten whole on every :meth:`Archive.add` through a temporary file and a rename, so
a run stopped at any moment leaves either the old archive or the new one.
"""
from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.dgm.selection import Candidate
from services.run_store import atomic_write

ARCHIVE_FILE = "archive.parquet"
STATUSES = ("admitted", "rejected", "error")

# The contract columns first, in contract order; the extras after them (extend, don't rename).
ARCHIVE_SCHEMA = pa.schema([
    ("agent_id", pa.string()), ("parent_id", pa.string()), ("generation", pa.int64()),
    ("status", pa.string()), ("score", pa.float64()), ("stage", pa.string()),
    ("n_tasks", pa.int64()), ("patch", pa.string()), ("created", pa.timestamp("us", tz="UTC")),
    ("n_solved", pa.int64()), ("attempt", pa.int64()), ("wall_s", pa.float64()),
    ("detail", pa.string()),
])


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ArchiveRow:
    """One agent. ``parent_id`` is None for the root ("initial") agent, whose ``patch`` is empty;
    ``attempt`` is None for agents no self-improvement attempt produced (the root)."""
    agent_id: str
    parent_id: Optional[str]
    generation: int
    status: str
    score: float
    stage: str
    n_tasks: int
    patch: str = ""
    created: datetime = field(default_factory=_now)
    n_solved: int = 0
    attempt: Optional[int] = None
    wall_s: float = 0.0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not self.agent_id:
            raise ValueError("agent_id must be a non-empty string")


_NULLABLE = ("parent_id", "attempt")


def _row_from_record(record: dict) -> ArchiveRow:
    """A row read back; unknown columns are ignored and a null in a non-nullable extra column
    (a file written before that column existed) takes the field's default."""
    names = {f.name for f in fields(ArchiveRow)}
    return ArchiveRow(**{k: v for k, v in record.items()
                         if k in names and (v is not None or k in _NULLABLE)})


class PatchError(RuntimeError):
    """A patch did not apply; the message carries git's own explanation."""


class Archive:
    def __init__(self, path: str | os.PathLike, rows: Iterable[ArchiveRow] = ()):
        self.path = Path(path)
        self._rows: list[ArchiveRow] = []
        self._by_id: dict[str, ArchiveRow] = {}
        for row in rows:
            self._index(row)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Archive":
        """The archive stored at ``path``; an empty one when the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        return cls(path, [_row_from_record(r) for r in pq.read_table(path).to_pylist()])

    def _index(self, row: ArchiveRow) -> None:
        if row.agent_id in self._by_id:
            raise ValueError(f"agent {row.agent_id!r} is already in the archive")
        self._rows.append(row)
        self._by_id[row.agent_id] = row

    # --- writing -----------------------------------------------------------------------------

    def add(self, row: ArchiveRow) -> None:
        """Append ``row`` and rewrite the file atomically; on a failed write nothing changes,
        neither the file nor this object."""
        if row.agent_id in self._by_id:
            raise ValueError(f"agent {row.agent_id!r} is already in the archive")
        self._write(self._rows + [row])
        self._index(row)

    def _write(self, rows: list[ArchiveRow]) -> None:
        # an explicit schema: types stay exact even for no rows or an all-null column
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=ARCHIVE_SCHEMA)
        atomic_write(self.path, lambda p: pq.write_table(table, p))

    # --- reading -----------------------------------------------------------------------------

    @property
    def rows(self) -> list[ArchiveRow]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._by_id

    def get(self, agent_id: str) -> ArchiveRow:
        try:
            return self._by_id[agent_id]
        except KeyError:
            raise KeyError(f"agent {agent_id!r} is not in the archive") from None

    def admitted(self) -> list[ArchiveRow]:
        return [r for r in self._rows if r.status == "admitted"]

    def children_count(self, agent_id: str) -> int:
        """nᵢ of parent selection: the agent's *admitted* children. The paper's archive holds only
        admitted children, so a rejected or failed attempt does not lower the parent's weight."""
        return sum(1 for r in self._rows if r.parent_id == agent_id and r.status == "admitted")

    def lineage(self, agent_id: str) -> list[str]:
        """Agent ids from the root to ``agent_id`` inclusive."""
        path, seen = [], set()
        current: Optional[str] = agent_id
        while current is not None:
            if current in seen:
                raise ValueError(f"the lineage of {agent_id!r} has a cycle at {current!r}")
            seen.add(current)
            path.append(current)
            current = self.get(current).parent_id
        return path[::-1]

    def candidates(self) -> list[Candidate]:
        """Admitted agents, as parent selection takes them."""
        return [Candidate(r.agent_id, r.score, self.children_count(r.agent_id))
                for r in self.admitted()]

    def materialize(self, agent_id: str, seed_dir: Path, dest: Path) -> Path:
        """Copy ``seed_dir`` to ``dest`` (which must not exist) and apply the patches along the
        agent's lineage, root first. Returns ``dest``."""
        shutil.copytree(seed_dir, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for aid in self.lineage(agent_id):
            try:
                apply_patch(dest, self.get(aid).patch)
            except PatchError as e:
                raise PatchError(f"materializing {agent_id!r}: patch of {aid!r}: {e}") from None
        return dest


# --- patches -------------------------------------------------------------------------------------

def _skipped(rel: Path) -> bool:
    return any(p == "__pycache__" or p.startswith(".") for p in rel.parts) or rel.suffix == ".pyc"


def _text_files(root: Path) -> dict[str, tuple[str, str]]:
    """posix relative path → (text, git mode) for every UTF-8 text file under ``root``.
    Binary (NUL byte) and non-UTF-8 files are left out: a text diff cannot carry them."""
    out: dict[str, tuple[str, str]] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if _skipped(rel) or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")   # bytes, not read_text: keep \r\n exactly
        except UnicodeDecodeError:
            continue
        mode = "100755" if os.access(path, os.X_OK) else "100644"
        out[rel.as_posix()] = (text, mode)
    return out


def _lines(text: str) -> list[str]:
    """Split on "\\n" only (str.splitlines would also split on \\r, \\f, \\x1c, …)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _hunks(old: str, new: str, a: str, b: str) -> list[str]:
    out = []
    for line in difflib.unified_diff(_lines(old), _lines(new), a, b):
        # a last line without "\n" gets git's marker, so the patch keeps "no newline at end"
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return out


def _file_diff(rel: str, old: Optional[tuple[str, str]], new: Optional[tuple[str, str]]) -> str:
    head = [f"diff --git a/{rel} b/{rel}\n"]
    if old is None:
        head.append(f"new file mode {new[1]}\n")
        body = _hunks("", new[0], "/dev/null", f"b/{rel}")
    elif new is None:
        head.append(f"deleted file mode {old[1]}\n")
        body = _hunks(old[0], "", f"a/{rel}", "/dev/null")
    else:
        if old[1] != new[1]:
            head += [f"old mode {old[1]}\n", f"new mode {new[1]}\n"]
        body = _hunks(old[0], new[0], f"a/{rel}", f"b/{rel}")
        if not body and old[1] == new[1]:
            return ""
    # an empty file added or deleted has no hunks: git's header alone says it
    return "".join(head + body)


def make_patch(old_dir: Path, new_dir: Path) -> str:
    """A git-style unified diff turning ``old_dir`` into ``new_dir`` (added, deleted and modified
    text files, mode changes; ``__pycache__``, ``*.pyc`` and dot-directories skipped).
    Empty string when nothing changed."""
    old, new = _text_files(Path(old_dir)), _text_files(Path(new_dir))
    return "".join(_file_diff(rel, old.get(rel), new.get(rel))
                   for rel in sorted(old.keys() | new.keys()))


def apply_patch(directory: Path, patch: str) -> None:
    """Apply ``patch`` (from :func:`make_patch`) inside ``directory`` with ``git apply``; all or
    nothing. Raises :class:`PatchError` with git's message when it does not apply."""
    if not patch.strip():
        return
    directory = Path(directory).resolve()
    # stop git from finding an enclosing repository: paths must stay relative to `directory`
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    env["GIT_CEILING_DIRECTORIES"] = str(directory.parent)
    proc = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=directory,
                          input=patch.encode("utf-8"), capture_output=True, env=env)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
        raise PatchError(f"git apply failed in {directory}: {msg}")
