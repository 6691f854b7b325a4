"""The holder's side of the device pool: a leased device as a local object, the lease kept alive
while it is held, and ``run_with_device`` — a task on some device, retried on a crash."""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Callable, Iterator, TypeVar

from actors.emulator.device import DeviceCrashed
from actors.emulator.observation import Observation
from actors.emulator.pool import DeviceActorDied, Lease, LeaseLost, PoolTimeout, TaskFailed

log = logging.getLogger(__name__)
T = TypeVar("T")


class LeasedDevice:
    """The holder's side of a lease: Device methods forwarded to the DeviceActor with the lease
    id attached. ``crashed`` remembers a crash even when the caller swallowed the error."""

    def __init__(self, lease: Lease, call_timeout_s: float | None = None):
        self.lease, self.serial, self.size = lease, lease.serial, tuple(lease.size)
        self.call_timeout_s, self.crashed = call_timeout_s, False

    def observe(self) -> Observation:
        return self._get(self.lease.actor.observe.remote(self.lease.lease_id))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._get(self.lease.actor.call.remote(self.lease.lease_id, method, *args, **kwargs))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(device, *args)`` inside the device's actor (``fn`` must pickle)."""
        return self._get(self.lease.actor.run.remote(self.lease.lease_id, fn, *args))

    def __getattr__(self, name: str) -> Any:
        """A device method as a remote call; a device property fetched now."""
        kind = self.__dict__["lease"].interface.get(name) if "lease" in self.__dict__ else None
        if kind == "property":
            return self.call(name)
        if kind == "method":
            return functools.partial(self.call, name)
        raise AttributeError(f"device {self.__dict__.get('serial')} offers no {name!r} to holders")

    def _get(self, ref: Any) -> Any:
        import ray
        try:
            return ray.get(ref, timeout=self.call_timeout_s)
        except (DeviceCrashed, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            self.crashed = True
            if isinstance(e, DeviceCrashed):
                raise
            raise DeviceActorDied(f"device {self.serial}'s actor died or hung: {e}") from e


def _renew_until(pool: Any, lease: Lease, stop: threading.Event) -> None:
    """Renew every third of the TTL until ``stop``. The thread dies with the holder's process,
    which is exactly what lets the pool reclaim a dead holder's device."""
    import ray
    while not stop.wait(max(0.05, lease.ttl_s / 3)):
        try:
            lease.expires_at = ray.get(pool.renew.remote(lease.lease_id), timeout=lease.ttl_s)
        except LeaseLost:
            return
        except Exception as e:   # a slow or restarting pool: keep trying until stopped
            log.warning("renewing the lease on %s failed: %s", lease.serial, e)


@contextlib.contextmanager
def leased_device(pool: Any, holder: str, timeout_s: float = 60.0,
                  call_timeout_s: float | None = None) -> Iterator[LeasedDevice]:
    """Hold a device for the ``with`` body: acquire, renew in a thread, release on exit (as
    crashed when the device or its actor died, so the pool restarts it)."""
    import ray
    lease = _pool_get(pool.acquire.remote(holder, timeout_s))
    device, stop = LeasedDevice(lease, call_timeout_s), threading.Event()
    threading.Thread(target=_renew_until, args=(pool, lease, stop), daemon=True).start()
    try:
        yield device
    except DeviceCrashed:
        device.crashed = True
        raise
    finally:
        stop.set()
        try:
            ray.get(pool.release.remote(lease.lease_id, device.crashed))
        except ray.exceptions.RayActorError as e:   # the pool is gone: nothing to give back
            log.warning("releasing %s: pool unreachable: %s", lease.serial, e)


def run_with_device(pool: Any, holder: str, fn: Callable[[LeasedDevice], T], retries: int = 1,
                    timeout_s: float = 60.0) -> T:
    """``fn(device)`` on a leased device. When the device crashes (or its actor dies) the
    attempt is dropped, the device goes back as crashed, and ``fn`` runs again on a new lease,
    at most ``retries`` more times; then ``TaskFailed`` says what happened on each attempt."""
    failures: list[str] = []
    for attempt in range(1, retries + 2):
        serial = "?"
        try:
            with leased_device(pool, holder, timeout_s) as device:
                serial = device.serial
                return fn(device)
        except DeviceCrashed as e:
            failures.append(f"attempt {attempt} on {serial}: {getattr(e, 'cause', e)}")
            last = e
    raise TaskFailed(f"{holder}: the device crashed on all {retries + 1} attempts ("
                     + "; ".join(failures) + ")") from last


def _pool_get(ref: Any) -> Any:
    """ray.get raising the pool's own PoolTimeout / LeaseLost, whose message says it all,
    instead of Ray's wrapper with the pool actor's traceback in front."""
    import ray
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (PoolTimeout, LeaseLost)):
            raise e.cause from None
        raise

