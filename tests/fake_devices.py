"""Test helpers for the device pool that Ray workers must import (so: a module, not the test file).

``FakeDevice`` writes every operation to ``<log_dir>/<serial>.log``: the log outlives the actor,
so a test can replay what one device saw, in order, across crashes and replacements. Control
files in the same folder steer it from the test: ``<serial>.fail_restarts`` (the next N restarts
fail) and ``<serial>.dead`` (the device dies while idle: ``healthy()`` is False).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from actors.emulator.device import DeviceCrashed, DeviceError

CRASH_TEXT = "boom"   # typing this crashes the device, like an emulator dying mid-episode


class FakeDevice:
    """A Device that records (operation, argument) lines; ``type_text`` carries the holder's
    tag ("holder|lease|step"), which is how the tests see who acted on the device and when."""

    def __init__(self, serial: str, log_dir: str, size: tuple[int, int] = (1080, 1920)):
        self.serial, self.size, self.dir = serial, size, Path(log_dir)
        self.crashed = False
        self.app = "launcher"
        self._log("start", "")

    def screenshot(self) -> bytes:
        return self._op("screenshot", "") or b"\x89PNG fake"

    def dump_hierarchy(self) -> str:
        return self._op("dump_hierarchy", "") or '<hierarchy rotation="0"/>'

    def tap(self, x: int, y: int) -> None:
        self._op("tap", f"{x},{y}")

    def long_press(self, x: int, y: int, seconds: float) -> None:
        self._op("long_press", f"{x},{y},{seconds}")

    def swipe(self, x1: int, y1: int, x2: int, y2: int, seconds: float = 0.3) -> None:
        self._op("swipe", f"{x1},{y1},{x2},{y2}")

    def type_text(self, text: str) -> None:
        self._op("type_text", text)
        if text == CRASH_TEXT:
            self.crashed = True
            raise DeviceCrashed(f"{self.serial}: emulator process exited")

    def press(self, button: str) -> None:
        self._op("press", button)

    def open_app(self, name: str) -> None:
        self._op("open_app", name)
        if name not in ("settings", "clock"):
            raise DeviceError("unknown_app", f"{name} is not installed")
        self.app = name

    def current_app(self) -> str:
        return self._op("current_app", "") or self.app

    def wait(self, seconds: float) -> None:
        self._op("wait", str(seconds))
        time.sleep(seconds)

    def reset(self) -> None:
        self._op("reset", "")
        self.app = "launcher"

    def healthy(self) -> bool:
        return not self.crashed and not self._control("dead").exists()

    def restart(self) -> None:
        self._log("restart", "")
        failing = self._control("fail_restarts")
        left = int(failing.read_text()) if failing.exists() else 0
        if left > 0:
            failing.write_text(str(left - 1))
            raise DeviceCrashed(f"{self.serial}: emulator did not boot")
        self._control("dead").unlink(missing_ok=True)
        self.crashed, self.app = False, "launcher"

    def close(self) -> None:
        self._log("close", "")

    def _op(self, op: str, arg: str) -> None:
        if self.crashed:
            raise DeviceCrashed(f"{self.serial} is gone")
        self._log(op, arg)

    def _log(self, op: str, arg: str) -> None:
        with open(self.dir / f"{self.serial}.log", "a") as f:
            f.write(f"{op}\t{arg}\n")

    def _control(self, name: str) -> Path:
        return self.dir / f"{self.serial}.{name}"


def read_log(log_dir: str, serial: str) -> list[tuple[str, str]]:
    path = Path(log_dir) / f"{serial}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple(line.split("\t", 1)) for line in lines]


class Holder:
    """A pool client run as a Ray actor by the tests (a rollout worker, in real life)."""

    def __init__(self, pool, name: str):
        self.pool, self.name = pool, name
        self._held: contextlib.ExitStack | None = None

    def cycles(self, n: int, steps: int = 3) -> list[str]:
        """n acquire / act / release rounds; the lease ids it got, in order."""
        from actors.emulator.lease import leased_device
        leases = []
        for _ in range(n):
            with leased_device(self.pool, self.name, timeout_s=30) as device:
                leases.append(device.lease.lease_id)
                for step in range(steps):
                    device.type_text(f"{self.name}|{device.lease.lease_id}|{step}")
                    device.wait(0.002)
        return leases

    def hold(self):
        """Acquire and keep holding (renewing) until this actor dies; returns the Lease."""
        from actors.emulator.lease import leased_device
        self._held = contextlib.ExitStack()
        device = self._held.enter_context(leased_device(self.pool, self.name, timeout_s=30))
        device.type_text(f"{self.name}|{device.lease.lease_id}|0")
        return device.lease
