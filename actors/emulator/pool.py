"""A leased device pool on Ray: one DevicePool actor lends DeviceActors (one per device) for a
renewable TTL and heals them: reset on release, restart on crash, a new actor after
``max_failures`` failed restarts in a row, reclaim of leases whose holder stopped renewing.

Fencing: each lease has a fresh id; the pool calls ``grant(id)`` on the DeviceActor before
handing the lease out and ``revoke()`` before taking it back, and the actor refuses any call
carrying another id (``LeaseLost``), so a holder that stalled past its TTL can never act on a
device someone else now holds.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from actors.emulator.device import DeviceCrashed
from actors.emulator.factory import DeviceSpec, make_device
from actors.emulator.observation import Observation, observe

log = logging.getLogger(__name__)
T = TypeVar("T")

# Holders may use any public attribute of the device but these: the pool owns its life.
POOL_ONLY = frozenset({"restart", "close"})


class LeaseLost(RuntimeError):
    """The caller's lease id is not the one the device is granted to (expired or released)."""


class PoolTimeout(TimeoutError):
    """No healthy device became free before the caller's deadline."""


class DeviceActorDied(DeviceCrashed):
    """The device's Ray actor died under its holder: handled exactly like a device crash."""


class TaskFailed(RuntimeError):
    """``run_with_device`` gave up: the device crashed on every attempt."""


@dataclass
class Lease:
    lease_id: str
    index: int            # the device's slot in its pool
    actor: Any            # the DeviceActor's handle
    serial: str
    expires_at: float     # time.time() after which the pool reclaims it unless renewed
    holder: str = ""
    ttl_s: float = 30.0
    size: tuple[int, int] = (0, 0)
    interface: dict[str, str] = field(default_factory=dict)   # name -> "method" | "property"


class DeviceActor:
    """One device that answers only its current lease holder. Run with ``max_concurrency=1``:
    the device sees one operation at a time, and a revoke is never overtaken."""

    def __init__(self, spec: DeviceSpec, index: int):
        self.device = make_device(spec, index)
        self.serial = self.device.serial
        self.lease_id: str | None = None
        self.crashed = _was_reconstructed()   # Ray restarted this process: not a clean device

    def info(self) -> dict[str, Any]:
        """serial, size, and the public interface (name -> "method" | "property"), so the
        holder's proxy also offers a backend's extras (the simulated device's state, ...)."""
        cls, interface = type(self.device), {}
        for name in dir(cls):
            attr = getattr(cls, name)
            if not (name.startswith("_") or name in POOL_ONLY or name in ("serial", "size")):
                kind = "property" if isinstance(attr, property) else "method"
                if kind == "property" or callable(attr):
                    interface[name] = kind
        return {"serial": self.serial, "size": tuple(self.device.size), "interface": interface}

    def grant(self, lease_id: str) -> None:
        self.lease_id = lease_id

    def revoke(self) -> None:
        self.lease_id = None

    def call(self, lease_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """``device.<name>(...)`` (or the property's value) for the lease holder."""
        if name.startswith("_") or name in POOL_ONLY:
            raise ValueError(f"{name!r} is not a device operation a lease holder may call")
        return self._run(lease_id, self._invoke, name, *args, **kwargs)

    def observe(self, lease_id: str) -> Observation:
        """Screenshot, hierarchy and foreground app in one round trip."""
        return self._run(lease_id, self._observe)

    def run(self, lease_id: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(device, *args)`` here, next to the device: a whole episode step (reset, replay,
        act, observe) in one round trip instead of one per device call."""
        return self._run(lease_id, fn, self.device, *args)

    def health(self) -> bool:
        try:
            return not self.crashed and bool(self.device.healthy())
        except Exception:   # healthy() must not raise; one that does is not healthy
            return False

    def reset(self) -> None:
        """The pool's reset, after a revoke; a crashed device refuses it (it needs a restart)."""
        self._guard(self.device.reset)

    def restart(self) -> None:
        """Relaunch the device; it counts as crashed until a restart succeeds."""
        self.crashed = True
        self.device.restart()
        self.crashed = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.device.close()

    def _invoke(self, name: str, *args: Any, **kwargs: Any) -> Any:
        value = getattr(self.device, name)
        return value(*args, **kwargs) if callable(value) else value

    def _observe(self) -> Observation:
        return observe(self.device)

    def _run(self, lease_id: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if lease_id is None or lease_id != self.lease_id:
            raise LeaseLost(f"device {self.serial}: lease {lease_id} is not current "
                            "(it expired or was released)")
        return self._guard(fn, *args, **kwargs)

    def _guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run on the device, remembering a crash: nothing but a restart runs after one."""
        if self.crashed:
            raise DeviceCrashed(f"device {self.serial} crashed and waits for a restart")
        try:
            return fn(*args, **kwargs)
        except DeviceCrashed:
            self.crashed = True
            raise


def _was_reconstructed() -> bool:
    import warnings
    try:
        import ray
        with warnings.catch_warnings():    # Ray's property reads its own deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:
        return False


@dataclass
class _Slot:
    index: int
    actor: Any
    info: dict[str, Any]       # DeviceActor.info(): serial, size, interface
    generation: int = 0        # how many times this slot's actor was replaced
    lease: Lease | None = None
    busy: bool = False         # the pool is resetting, probing or restarting it
    healthy: bool = True
    failures: int = 0          # consecutive failed restarts
    failed_restarts: int = 0
    crashes: int = 0

    @property
    def serial(self) -> str:
        return self.info["serial"]

    @property
    def state(self) -> str:
        if self.lease:
            return "leased"
        return "busy" if self.busy else "free" if self.healthy else "unhealthy"


class DevicePool:
    """Run as ONE async Ray actor (``create_pool``): all bookkeeping happens on its event loop,
    so it needs no locks, and an ``acquire`` waiting for a device never blocks a ``release``."""

    def __init__(self, name: str, spec: DeviceSpec, size: int, *, lease_ttl_s: float = 30.0,
                 health_interval_s: float = 10.0, max_failures: int = 3, max_restarts: int = 1,
                 device_options: dict[str, Any] | None = None, call_timeout_s: float = 60.0,
                 restart_timeout_s: float = 300.0):
        self.name, self.spec, self.size = name, spec, size
        self.lease_ttl_s, self.health_interval_s = lease_ttl_s, health_interval_s
        self.max_failures, self.max_restarts = max_failures, max_restarts
        self.device_options = dict(device_options or {})   # num_cpus, resources={"kvm": 1}
        self.call_timeout_s, self.restart_timeout_s = call_timeout_s, restart_timeout_s
        self.counters = dict.fromkeys(
            ("restarts", "failed_restarts", "replacements", "expired_leases", "crashes"), 0)
        self._slots: list[_Slot] = []
        self._cond: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    async def start(self) -> int:
        """Create the device actors and the reaper, once (it needs the actor's event loop)."""
        if self._cond is None:
            self._cond = asyncio.Condition()
            self._slots = list(await asyncio.gather(*map(self._new_slot, range(self.size))))
            self._background(self._reap_forever())
        return self.size

    async def acquire(self, holder: str, timeout_s: float = 60.0) -> Lease:
        await self.start()
        deadline = time.monotonic() + timeout_s
        while True:
            slot = await self._reserve(holder, deadline, timeout_s)
            try:
                await self._dev(slot.actor.grant.remote(slot.lease.lease_id))
                return slot.lease
            except Exception as e:   # its actor died while idle: heal it, try another
                log.warning("pool %s: grant on %s failed: %s", self.name, slot.serial, e)
                self._heal_later(slot, "restart")

    async def renew(self, lease_id: str) -> float:
        slot = self._slot_of(lease_id)
        if slot is None:
            raise LeaseLost(f"pool {self.name}: lease {lease_id} expired or was released")
        slot.lease.expires_at = time.time() + self.lease_ttl_s
        return slot.lease.expires_at

    async def release(self, lease_id: str, crashed: bool = False) -> bool:
        """Take the device back (reset, or restart if ``crashed``) in the background. False
        when the lease was already reclaimed: the device's new holder is left alone."""
        slot = self._slot_of(lease_id)
        if slot is not None:
            self._heal_later(slot, "restart" if crashed else "reset")
        return slot is not None

    async def stats(self) -> dict[str, Any]:
        states = [s.state for s in self._slots]
        devices = [dict(index=s.index, serial=s.serial, state=s.state, generation=s.generation,
                        failures=s.failures, failed_restarts=s.failed_restarts,
                        crashes=s.crashes, holder=s.lease.holder if s.lease else None)
                   for s in self._slots]
        return dict(name=self.name, size=self.size, **{k: states.count(k) for k in
                    ("free", "leased", "busy", "unhealthy")}, **self.counters, devices=devices)

    async def shutdown(self) -> None:
        """Stop healing, fail the waiting acquires, close and kill every device actor."""
        import ray
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._cond is not None:
            await self._wake()
        for slot in self._slots:
            with contextlib.suppress(Exception):
                await self._dev(slot.actor.close.remote(), 10.0)
            ray.kill(slot.actor, no_restart=True)
            slot.lease, slot.healthy = None, False

    async def _reserve(self, holder: str, deadline: float, timeout_s: float) -> _Slot:
        async with self._cond:
            while not self._closed:
                slot = next((s for s in self._slots if s.state == "free"), None)
                if slot is not None:
                    slot.lease = Lease(uuid.uuid4().hex, slot.index, slot.actor, slot.serial,
                                       time.time() + self.lease_ttl_s, holder, self.lease_ttl_s,
                                       slot.info["size"], slot.info["interface"])
                    return slot
                if (left := deadline - time.monotonic()) <= 0:
                    busy = ", ".join(f"{n} {k}" for k in ("leased", "busy", "unhealthy")
                                     if (n := [s.state for s in self._slots].count(k)))
                    raise PoolTimeout(f"pool {self.name!r}: no healthy device free for holder "
                                      f"{holder!r} within {timeout_s:g}s ({busy})")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), left)
        raise RuntimeError(f"pool {self.name} is shut down")

    def _slot_of(self, lease_id: str) -> _Slot | None:
        return next((s for s in self._slots if s.lease and s.lease.lease_id == lease_id), None)

    def _heal_later(self, slot: _Slot, action: str) -> None:
        """Take the slot out of circulation now (no await: no acquire can slip in between)
        and ``_heal`` it in the background."""
        slot.lease, slot.busy = None, True
        if action == "restart":
            self._count_crash(slot)
        self._background(self._heal(slot, action))

    async def _heal(self, slot: _Slot, action: str) -> None:
        """``reset``: revoke + reset; ``restart``: revoke + restart; ``probe``: health check.
        A failed reset or probe counts as a crash; any failure ends in ``_recover``."""
        try:
            if action != "probe":
                with contextlib.suppress(Exception):
                    await self._dev(slot.actor.revoke.remote())
            if action == "restart" or not slot.healthy:
                return await self._recover(slot)
            check = slot.actor.reset if action == "reset" else slot.actor.health
            try:
                ok = await self._dev(check.remote()) is not False
            except Exception as e:
                log.warning("pool %s: %s of %s failed: %s", self.name, action, slot.serial, e)
                ok = False
            if not ok:
                self._count_crash(slot)
                await self._recover(slot)
        finally:
            slot.busy = False
            await self._wake()

    async def _recover(self, slot: _Slot) -> None:
        """Restart until it works; after ``max_failures`` failures in a row, replace the actor."""
        slot.healthy = False
        while slot.failures < self.max_failures:
            try:
                await self._dev(slot.actor.restart.remote(), self.restart_timeout_s)
            except Exception as e:
                log.warning("pool %s: restart of %s failed: %s", self.name, slot.serial, e)
                slot.failures += 1
                slot.failed_restarts += 1
                self.counters["failed_restarts"] += 1
                continue
            slot.failures, slot.healthy = 0, True
            self.counters["restarts"] += 1
            return
        await self._replace(slot)

    async def _replace(self, slot: _Slot) -> None:
        """Kill the actor (a wedged device may never answer again) and start a fresh one."""
        import ray
        ray.kill(slot.actor, no_restart=True)
        self.counters["replacements"] += 1
        slot.generation, slot.failures = slot.generation + 1, 0
        try:
            fresh = await self._new_slot(slot.index, slot.generation)
            slot.actor, slot.info, slot.healthy = fresh.actor, fresh.info, True
        except Exception as e:   # stays unhealthy; the next health round tries again
            log.error("pool %s: replacing device %d failed: %s", self.name, slot.index, e)

    async def _new_slot(self, index: int, generation: int = 0) -> _Slot:
        import ray
        name = f"{self.name}:device:{index}" + (f":{generation}" if generation else "")
        actor = ray.remote(DeviceActor).options(
            name=name, max_restarts=self.max_restarts, max_concurrency=1,
            **self.device_options).remote(self.spec, index)
        try:
            info = await self._dev(actor.info.remote(), self.restart_timeout_s)
        except asyncio.TimeoutError:   # never placed: say what it asked for, leave nothing behind
            ray.kill(actor, no_restart=True)
            raise PoolTimeout(f"pool {self.name!r}: device actor {name} did not start within "
                              f"{self.restart_timeout_s:.0f}s; it asks for {self.device_options or 'no resources'}"
                              f" — check the cluster has them free (ray status)") from None
        except BaseException:   # failed to build: no leftovers
            ray.kill(actor, no_restart=True)
            raise
        return _Slot(index, actor, info, generation)

    def _count_crash(self, slot: _Slot) -> None:
        slot.crashes += 1
        self.counters["crashes"] += 1

    async def _reap_forever(self) -> None:
        """Reclaim expired leases every tick; probe idle devices every ``health_interval_s``."""
        tick = max(0.05, min(self.lease_ttl_s / 4, self.health_interval_s))
        last_probe = time.monotonic()
        while not self._closed:
            await asyncio.sleep(tick)
            for slot in self._slots:
                if slot.lease and slot.lease.expires_at < time.time():
                    log.warning("pool %s: lease of %s on %s expired", self.name,
                                slot.lease.holder, slot.serial)
                    self.counters["expired_leases"] += 1
                    self._heal_later(slot, "reset")
            if time.monotonic() - last_probe >= self.health_interval_s:
                last_probe = time.monotonic()
                for slot in self._slots:
                    if slot.state in ("free", "unhealthy"):
                        self._heal_later(slot, "probe")

    async def _dev(self, ref: Any, timeout_s: float | None = None) -> Any:
        """Await a DeviceActor call with a deadline, so a wedged device cannot stall the pool."""
        return await asyncio.wait_for(ref, timeout_s or self.call_timeout_s)

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def create_pool(name: str, spec: DeviceSpec, size: int, **options: Any) -> Any:
    """Start the DevicePool actor ``f"{name}:pool"`` and its devices; ``options`` go to
    DevicePool (lease_ttl_s, health_interval_s, max_failures, device_options, ...)."""
    import ray
    pool = ray.remote(DevicePool).options(name=f"{name}:pool", num_cpus=0, max_concurrency=256)
    handle = pool.remote(name, spec, size, **options)
    ray.get(handle.start.remote())
    return handle
