"""A run directory as SRT's report reads it (MM-UPT's too): metrics by name and step, the run's
name and reward kind, and its events of interest; which step is best, as ``checkpoints/best``
chose it. Reads only."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.parquet"
CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"

PASS1 = "heldout/pass@1"
VAL_PASS1 = "val/pass@1"
_MAJ_RE = re.compile(r"^heldout/maj@(\d+)$")
REWARD_METRICS = ("train/pseudo_reward", "train/majority_agreement", "train/true_reward",
                  "collapse/top_answer_share", "collapse/prompt_echo_share")
EVENTS_OF_INTEREST = ("collapse_detected", "early_stop", "best_checkpoint")

Series = list[tuple[int, float]]   # (step, value), sorted by step, one value per step


# --------------------------------------------------------------------------------------------
# Reading a run directory
# --------------------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    name: str
    reward_kind: Optional[str]
    metrics: dict[str, Series]
    events: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.reward_kind})" if self.reward_kind else self.name

    def series(self, name: str) -> Series:
        return self.metrics.get(name, [])

    @property
    def maj_name(self) -> Optional[str]:
        """The held-out ``maj@k`` metric (the largest k if several were logged)."""
        found = [(int(m.group(1)), n) for n in self.metrics if (m := _MAJ_RE.match(n))]
        return max(found)[1] if found else None

    @property
    def maj_label(self) -> str:
        n = self.maj_name
        return n.split("/", 1)[1] if n else "maj@k"

    def best_pass1(self) -> Optional[tuple[int, float]]:
        """(step, value) of the highest held-out pass@1; the earliest step on ties."""
        s = self.series(PASS1)
        if not s:
            return None
        return max(s, key=lambda sv: (sv[1], -sv[0]))

    def best(self) -> Optional[tuple[str, int, float]]:
        """(metric, step, value) of the best step as ``checkpoints/best`` names it: the run's last
        ``best_checkpoint`` event; for a run without one, the rule the loop follows — val/pass@1
        when there is a validation split, else held-out pass@1 (earliest step on ties)."""
        marked = [e for e in self.events if e.get("event") == "best_checkpoint"]
        if marked and marked[-1].get("metric"):
            e = marked[-1]
            metric, step = str(e["metric"]), _as_int(e.get("step"))
            value = dict(self.series(metric)).get(step, e.get("value"))
            if value is not None:
                return metric, step, float(value)
        metric = VAL_PASS1 if self.series(VAL_PASS1) else PASS1
        s = self.series(metric)
        if not s:
            return None
        step, value = max(s, key=lambda sv: (sv[1], -sv[0]))
        return metric, step, value


def _load_metrics(run_dir: Path) -> dict[str, Series]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"no metrics: {path} does not exist (is {run_dir} a run directory?)")
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path, columns=["step", "name", "value"])
    except Exception as e:  # corrupt, truncated, or missing columns
        raise ValueError(f"cannot read {path}: {e}") from None
    steps = table.column("step").to_pylist()
    names = table.column("name").to_pylist()
    values = table.column("value").to_pylist()
    latest: dict[str, dict[int, float]] = {}
    for step, name, value in zip(steps, names, values):
        if step is None or name is None or value is None or not math.isfinite(value):
            continue
        latest.setdefault(name, {})[int(step)] = float(value)   # a re-logged step: last row wins
    if not latest:
        raise ValueError(f"no metrics: {path} holds no finite values")
    return {name: sorted(by_step.items()) for name, by_step in latest.items()}


def _load_config(run_dir: Path) -> tuple[str, Optional[str]]:
    """(run name, reward kind) from config.yaml; falls back to the directory name."""
    path = run_dir / CONFIG_FILE
    name, kind = run_dir.resolve().name, None
    if not path.is_file():
        return name, kind
    import yaml
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return name, kind
    if isinstance(raw, dict):
        if raw.get("name"):
            name = str(raw["name"])
        reward = raw.get("reward")
        if isinstance(reward, dict) and reward.get("kind"):
            kind = str(reward["kind"])
    return name, kind


def _load_events(run_dir: Path) -> list[dict]:
    """Events of interest, by step. Lines that are not JSON objects (e.g. a line still being
    written by a live run) are skipped."""
    path = run_dir / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and ev.get("event") in EVENTS_OF_INTEREST:
            events.append(ev)
    events.sort(key=lambda e: _as_int(e.get("step")))
    return events


def _as_int(v, default: int = -1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def load_run(run_dir: str | os.PathLike) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"no metrics: run directory {run_dir} does not exist "
                         f"(expected {run_dir / METRICS_FILE})")
    metrics = _load_metrics(run_dir)
    name, kind = _load_config(run_dir)
    return Run(run_dir, name, kind, metrics, _load_events(run_dir))
