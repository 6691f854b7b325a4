"""The run directory (docs/architecture.md): config, metrics, samples, events, checkpoints.

Every file is written to a temporary name in its own directory and renamed into place, so a run
stopped at any moment leaves each file either old or new, never half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from actors.storage import RESUME_DIR, shared_mode

METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("name", pa.string()), ("value", pa.float64()),
                            ("time", pa.timestamp("us", tz="UTC"))])


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        shared_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


class RunStore:
    """``root`` is a local directory (or a shared mount). With ``remote`` (a pyarrow URI), ``root``
    is the driver's mirror of it, pushed after checkpoints and metric flushes."""

    def __init__(self, root: str | Path, remote: str | None = None):
        self.root = Path(root)
        for sub in ("samples", "checkpoints"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.remote = None
        if remote:
            from services.storage import RunMirror
            self.remote = RunMirror(self.root, remote)
        self._metrics: list[dict[str, Any]] = self.read_metrics()
        self.sinks: list = []        # experiment trackers (services/tracking.py): the same stream
        self.last_step = max((m["step"] for m in self._metrics), default=0)

    @property
    def location(self) -> str:
        """Where the run lives, as users name it: the URI, or the directory."""
        return self.remote.uri if self.remote else str(self.root)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def sync(self) -> None:
        if self.remote:
            self.remote.push()

    def actor_dir(self, checkpoint: Path, part: str) -> str:
        """Where an actor (maybe on another node) writes or reads part ``part`` of a checkpoint;
        ``checkpoint`` is the directory ``save_checkpoint`` handed to its writer, or a finished one."""
        # a checkpoint being written is ".step_N.RANDOM" (save_checkpoint's temporary directory)
        name = checkpoint.name[1:].split(".", 1)[0] if checkpoint.name.startswith(".") else checkpoint.name
        if self.remote:
            return f"{self.remote.uri}/checkpoints/{name}/{part}"
        return str(checkpoint / part)

    # --- metrics ----------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.parquet"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return pq.read_table(self.metrics_path).to_pylist()

    def log(self, step: int, values: dict[str, float]) -> None:
        now = datetime.now(timezone.utc)
        kept = {k: float(v) for k, v in values.items() if v is not None}
        self._metrics.extend({"step": int(step), "name": k, "value": v, "time": now} for k, v in kept.items())
        self.last_step = int(step)
        for sink in self.sinks:
            sink.log(int(step), kept)

    def flush_metrics(self) -> None:
        table = pa.Table.from_pylist(self._metrics, schema=METRICS_SCHEMA)
        atomic_write(self.metrics_path, lambda p: pq.write_table(table, p))
        for sink in self.sinks:
            sink.flush()
        self.sync()

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metrics logged after ``after_step`` (work lost with a stopped run is redone)."""
        self._metrics = [m for m in self._metrics if m["step"] <= after_step]
        for sink in self.sinks:
            sink.truncate(after_step)
        self.flush_metrics()

    def close_sinks(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def metric_series(self, name: str) -> list[tuple[int, float]]:
        return [(m["step"], m["value"]) for m in self._metrics if m["name"] == name]

    # --- samples and events -----------------------------------------------------------------------

    def write_samples(self, step: int, rows: list[dict[str, Any]], prefix: str = "train") -> None:
        if rows:
            table = pa.Table.from_pylist(rows)
            atomic_write(self.root / "samples" / f"{prefix}_step{step:06d}.parquet",
                         lambda p: pq.write_table(table, p))

    def event(self, event: str, step: int | None = None, **fields: Any) -> dict:
        """Append one line to events.jsonl; ``step`` defaults to the last step logged."""
        if event == "run_finished":   # a changed config later means "go on" (services/run_state.py)
            from services.run_state import config_digest
            fields.setdefault("config", config_digest(self.root))
        record = {"event": event, "step": int(self.last_step if step is None else step),
                  "time": datetime.now(timezone.utc).isoformat(), **fields}
        with open(self.root / "events.jsonl", "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        return record

    # --- config -----------------------------------------------------------------------------------

    def write_config(self, text: str) -> None:
        atomic_write_text(self.root / "config.yaml", text)

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        return self.root / "checkpoints" / f"step_{step:06d}"

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int,
                        protect: tuple[str, ...] = ()) -> Path:
        """``write(tmp_dir)`` fills a temporary directory, renamed to ``step_N`` when complete;
        then the ``latest`` pointer moves, the older checkpoints lose their resume state (only
        the latest one is resumed from) and those beyond ``keep`` are deleted."""
        final = self.checkpoint_dir(step)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        shared_mode(tmp, directory=True)
        try:
            write(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(self.root / "checkpoints" / "latest", final.name)
        for old in self.checkpoints():
            if old != final:
                self.drop_resume_state(old)
        self.prune(keep, protect)
        self.sync()
        return final

    def checkpoints(self) -> list[Path]:
        """The finished checkpoints, oldest first."""
        return sorted(p for p in (self.root / "checkpoints").glob("step_*") if p.is_dir())

    def prune(self, keep: int, protect: tuple[str, ...] = ()) -> None:
        """Delete the checkpoints older than the newest ``keep``, except those named in ``protect``."""
        for old in self.checkpoints()[:-keep]:
            if old.name not in protect:
                shutil.rmtree(old, ignore_errors=True)

    def drop_resume_state(self, checkpoint: Path) -> None:
        """Delete each part's ``resume/`` folder (optimizer and RNG state) from ``checkpoint``: its
        weights stay. Done to every checkpoint but the latest, and to the latest when its run has
        nothing left to do."""
        if self.remote:
            self.remote.delete_in_parts(f"checkpoints/{checkpoint.name}", RESUME_DIR)
        for part in checkpoint.glob(f"*/{RESUME_DIR}"):
            shutil.rmtree(part, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.root / "checkpoints" / "latest"
        if not pointer.exists():
            return None
        path = self.root / "checkpoints" / pointer.read_text().strip()
        return path if path.is_dir() else None

    def mark_best(self, step: int, keep: int | None = None) -> None:
        """Point ``best`` at step ``step``; with ``keep``, the step it pointed at before is deleted
        unless it is among the newest ``keep``."""
        atomic_write_text(self.root / "checkpoints" / "best", self.checkpoint_dir(step).name)
        if keep is not None:
            self.prune(keep, protect=(self.checkpoint_dir(step).name,))
            self.sync()

    def best_checkpoint(self) -> Path | None:
        pointer = self.root / "checkpoints" / "best"
        return self.root / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def new_run_dir(base: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{name}-{stamp}"
    i = 1
    while path.exists():
        path = Path(base) / f"{name}-{stamp}-{i}"
        i += 1
    return path
