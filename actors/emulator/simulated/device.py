"""``SimulatedDevice``: the whole :class:`~actors.emulator.device.Device` protocol in pure Python.

A phone with a launcher and four apps (Settings, Contacts, To-do, Clock) whose data is one JSON-able
dict (``state``). It is deterministic: the same calls from the same state give the same screens,
ids and PNG bytes, so trajectories, rewards and tests can be replayed exactly. Crashes can be
injected (``crash()`` or ``crash_after``) to exercise the pool's restart path.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any, Optional

from actors.emulator.device import BUTTONS, DeviceCrashed, DeviceError

from .apps import Navigator
from .dump import to_xml
from .render import render_png
from .state import default_state, normalized
from .widgets import View, handler_at, scrollable_at


class SimulatedDevice:
    """A simulated Android phone of ``size`` (width, height) pixels.

    ``seed`` picks the default data (0: the canonical data the task suite is written for).
    ``crash_after=N`` makes the N-th action call (tap, long_press, swipe, type_text, press,
    open_app, wait) raise :class:`DeviceCrashed`; it fires once — ``restart()`` gives a device
    that does not crash again unless told to.
    """

    def __init__(self, serial: str = "sim-0", size: tuple[int, int] = (540, 1200), seed: int = 0,
                 crash_after: Optional[int] = None):
        self.serial = serial
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self._initial = default_state(seed)
        self._crash_after = crash_after
        self._actions = 0
        self._crashed = False
        self._closed = False
        self._nav = Navigator(copy.deepcopy(self._initial), self.size)
        self._cache: Optional[tuple[View, str]] = None

    # --- liveness ------------------------------------------------------------------------------
    def crash(self) -> None:
        """From now on every call but healthy/restart/close raises DeviceCrashed."""
        self._crashed = True

    def healthy(self) -> bool:
        return not (self._crashed or self._closed)

    def restart(self) -> None:
        """A fresh phone: alive again, back to the initial state on the home screen."""
        self._crashed = self._closed = False
        self._crash_after = None
        self._actions = 0
        self._reset()

    def close(self) -> None:
        self._closed = True

    def _alive(self) -> None:
        if self._closed:
            raise DeviceCrashed(f"{self.serial}: device is closed")
        if self._crashed:
            raise DeviceCrashed(f"{self.serial}: device crashed; restart it")

    def _action(self) -> None:
        """Every action call goes through here: liveness, crash injection, cache invalidation."""
        self._alive()
        self._actions += 1
        self._cache = None
        if self._crash_after is not None and self._actions == self._crash_after:
            self._crashed = True
            raise DeviceCrashed(f"{self.serial}: injected crash on action {self._actions}")

    # --- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """A deep copy of the phone's data (settings, contacts, todo, alarms)."""
        self._alive()
        return copy.deepcopy(self._nav.data)

    def load_state(self, state: dict[str, Any]) -> None:
        """Make ``state`` (missing parts filled from the defaults) the one ``reset`` returns to."""
        self._alive()
        self._initial = normalized(state, self.seed)
        self._reset()

    def reset(self) -> None:
        self._alive()
        self._reset()

    def _reset(self) -> None:
        self._nav = Navigator(copy.deepcopy(self._initial), self.size)
        self._cache = None

    def screen_id(self) -> str:
        """``<screen>#<8 hex>``: the screen's name plus a hash of everything visible on it."""
        xml = self.dump_hierarchy()
        return f"{self._nav.top.screen_name}#{hashlib.sha1(xml.encode()).hexdigest()[:8]}"

    # --- observation ---------------------------------------------------------------------------
    def _view(self) -> tuple[View, str]:
        if self._cache is None:
            root = self._nav.top.build()
            self._cache = (root, to_xml(root, self._nav.top.package))
        return self._cache

    def dump_hierarchy(self) -> str:
        self._alive()
        return self._view()[1]

    def screenshot(self) -> bytes:
        self._alive()
        return render_png(self._view()[0], self._nav.data, self.size)

    def current_app(self) -> str:
        """The foreground app's name as the launcher shows it ("launcher" on the home screen)."""
        self._alive()
        return self._nav.current_app()

    # --- actions -------------------------------------------------------------------------------
    def _point(self, x: int, y: int) -> None:
        width, height = self.size
        if not (0 <= x < width and 0 <= y < height):
            raise DeviceError("out_of_screen", f"({x}, {y}) is outside the {width}x{height} screen")

    def tap(self, x: int, y: int) -> None:
        """Taps on nothing tappable are no-ops, as on a phone."""
        self._action()
        self._point(x, y)
        view = handler_at(self._nav.top.build(), x, y)
        if view is not None and view.on_tap is not None:
            view.on_tap()

    def long_press(self, x: int, y: int, seconds: float = 1.0) -> None:
        """Runs the long-press handler; a view without one gets a click, as Android does on release."""
        self._action()
        self._point(x, y)
        if seconds < 0:
            raise DeviceError("bad_input", f"long_press time must be >= 0, got {seconds}")
        view = handler_at(self._nav.top.build(), x, y)
        handler = view and (view.on_long or view.on_tap)
        if handler:
            handler()

    def swipe(self, x1: int, y1: int, x2: int, y2: int, seconds: float = 0.3) -> None:
        """A mostly vertical swipe scrolls the list under its start point (finger up ⇒ later rows
        come into view); horizontal swipes and swipes over nothing scrollable do nothing."""
        self._action()
        self._point(x1, y1)
        self._point(x2, y2)
        screen = self._nav.top
        if screen.dialog or abs(y1 - y2) <= abs(x1 - x2):
            return
        lst = scrollable_at(screen.build(), x1, y1)
        if lst is not None and lst.on_scroll is not None:
            lst.on_scroll(y1 - y2)

    def type_text(self, text: str) -> None:
        """Appends to the focused text field (DeviceError "no_focus" when none is focused)."""
        self._action()
        if not isinstance(text, str):
            raise DeviceError("bad_input", f"text must be a string, got {type(text).__name__}")
        self._nav.top.type_text(text)

    def press(self, button: str) -> None:
        self._action()
        name = str(button).strip().lower()
        if name not in BUTTONS:
            raise DeviceError("bad_input", f"button must be one of {', '.join(BUTTONS)}, got {button!r}")
        if name == "back":
            self._nav.back()
        else:
            self._nav.home()

    def open_app(self, name: str) -> None:
        """Cold-starts the app on its main screen; the name is matched ignoring case and
        punctuation ("todo" opens To-do); DeviceError("unknown_app") lists what is installed."""
        self._action()
        self._nav.open(str(name))

    def wait(self, seconds: float) -> None:
        """Nothing happens in the background here, so waiting changes nothing."""
        self._action()
        if seconds < 0:
            raise DeviceError("bad_input", f"wait time must be >= 0, got {seconds}")

    def __repr__(self) -> str:
        return f"SimulatedDevice(serial={self.serial!r}, size={self.size}, seed={self.seed})"
