"""The device interface every backend implements (simulated, adb), and its two error kinds.

A *step error* (``DeviceError``: unknown app, a tap the device refused) belongs to the trajectory
that caused it: it is recorded on that step and the episode goes on. A *crash* (``DeviceCrashed``:
the emulator died, adb lost the device, the simulated device was told to fail) means the device
can no longer be trusted: the pool restarts it and the task is retried or failed.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

BUTTONS = ("back", "home")


class DeviceError(RuntimeError):
    """A per-step failure the trajectory records (``code``: unknown_app, bad_input, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    def __reduce__(self) -> tuple:      # crosses Ray intact: unpickling calls cls(code, message)
        return type(self), (self.code, self.message)


class DeviceCrashed(RuntimeError):
    """The device is gone or wedged; only a restart helps."""


@runtime_checkable
class Device(Protocol):
    """One Android device. Coordinates are device pixels; ``size`` is (width, height)."""
    serial: str
    size: tuple[int, int]

    def screenshot(self) -> bytes: ...                    # PNG bytes
    def dump_hierarchy(self) -> str: ...                  # uiautomator dump XML (<hierarchy rotation=...>)
    def tap(self, x: int, y: int) -> None: ...
    def long_press(self, x: int, y: int, seconds: float) -> None: ...
    def swipe(self, x1: int, y1: int, x2: int, y2: int, seconds: float = 0.3) -> None: ...
    def type_text(self, text: str) -> None: ...
    def press(self, button: str) -> None: ...             # one of BUTTONS
    def open_app(self, name: str) -> None: ...            # DeviceError("unknown_app") if not installed
    def current_app(self) -> str: ...                     # the foreground app's name ("launcher" on home)
    def wait(self, seconds: float) -> None: ...
    def reset(self) -> None: ...                          # back to the clean state (snapshot), home screen
    def healthy(self) -> bool: ...                        # cheap liveness probe, never raises
    def restart(self) -> None: ...                        # full relaunch (emulator restart / fresh sim)
    def close(self) -> None: ...
