"""What a local run directory holds, read before Ray starts: nothing, a start that failed before
anything resumable was written, a run that can be resumed, or a finished run.

A run is finished when its last ``run_finished`` event (written by the driver when a job returns)
is not followed by a ``resumed`` one and ``config.yaml`` is unchanged since then — editing the
config (or ``resume --set``) is how a user asks a finished run for more."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from services.config import ConfigError


def config_digest(root: Path) -> str | None:
    path = root / "config.yaml"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def read_events(root: Path) -> list[dict]:
    path = root / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:    # a line cut by a crash says nothing
            continue
    return events


def finished_event(root: Path) -> dict | None:
    """The ``run_finished`` event that still holds, else None."""
    last = None
    for event in read_events(root):
        if event.get("event") == "run_finished":
            last = event
        elif event.get("event") in ("resumed", "run_started"):
            last = None
    if last is None or last.get("config") not in (None, config_digest(root)):
        return None
    return last


def resumable(root: Path, config_class) -> bool:
    return any((root / name).exists() for name in config_class.RESUME_FROM)


def is_failed_start(root: Path, config_class) -> bool:
    """Written by a start that stopped before its first checkpoint: nothing in it to resume."""
    return (root / "config.yaml").is_file() and not resumable(root, config_class)


def prepare_new_run(run_dir: str, config_class, empty: bool) -> bool:
    """Check that ``run`` may use ``run_dir``; with ``empty``, a failed start's directory is
    emptied for reuse. True when ``run_dir`` is such a directory."""
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory")
    if not root.exists() or not any(root.iterdir()):
        return False
    if not is_failed_start(root, config_class):
        raise ConfigError(f"--run-dir {run_dir} is not empty; use `evoray resume {run_dir}` to continue it")
    if empty:
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return True


def check_resume(root: Path, run_dir: str, config_class, overrides: list[str]) -> None:
    """Before Ray starts: a directory with nothing to resume, or a finished run, ends here.
    ``root``: the local directory (a URI's mirror); ``run_dir``: as the user named it."""
    if not resumable(root, config_class):
        raise ConfigError(f"{run_dir} has no checkpoint to resume from (it stopped before its first "
                          f"one); start it again with `evoray run {run_dir.rstrip('/')}/config.yaml --run-dir {run_dir}`")
    done = finished_event(root)
    if done is not None and not overrides:
        keys = [k for k in config_class.RESUMABLE_KEYS if not k.startswith(("ray.", "tracking"))]
        more = f" (e.g. `evoray resume {run_dir} --set {keys[0]}=…`)" if keys else ""
        raise ConfigError(f"{run_dir} already finished at step {done.get('step')}"
                          + (f" ({done['stopped']})" if done.get("stopped") else "")
                          + f"; nothing to resume — to go further, raise its length{more}")


def remove_failed_start(run_dir: str, config_class, created: bool) -> bool:
    """After a start that failed before anything resumable was written, remove what it wrote (the
    whole directory when this command created it). True when something was removed."""
    root = Path(run_dir)
    if not root.is_dir() or resumable(root, config_class):
        return False
    if created:
        shutil.rmtree(root, ignore_errors=True)
    else:
        for child in root.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return True
