"""Calling actors that may restart: what every role's driver side needs."""
from __future__ import annotations

import time


def wait_for_restart(actor, timeout_s: float, probe: str = "ready") -> None:
    """Block until a restarting actor answers again (calls fail fast while it restarts); a dead
    one (restarts used up) raises ``RayActorError``."""
    import ray
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(getattr(actor, probe).remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def describe(error: BaseException) -> str:
    """An exception in one line for an event: its type and the first line of its message."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
