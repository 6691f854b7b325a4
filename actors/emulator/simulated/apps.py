"""The installed apps, the home screen and the back stack that moves between screens."""
from __future__ import annotations

import re
from dataclasses import dataclass

from actors.emulator.device import DeviceError

from .clock import AlarmList
from .contacts import ContactList
from .settings import SettingsMain
from .todo import TodoList
from .widgets import STATUS_H, Screen, View


@dataclass(frozen=True)
class App:
    key: str                # package suffix and screen-id prefix
    name: str               # what the launcher shows and open_app takes
    main: type[Screen]      # the screen a (cold) start lands on


APPS = (App("clock", "Clock", AlarmList), App("contacts", "Contacts", ContactList),
        App("settings", "Settings", SettingsMain), App("todo", "To-do", TodoList))
LAUNCHER = "launcher"
COLUMNS, CELL_H, GRID_TOP = 4, 170, 120


def _plain(name: str) -> str:
    """"To-do", "to do" and "TODO" all name the same app."""
    return re.sub(r"[^a-z0-9]", "", name.casefold())


def find_app(name: str) -> App:
    wanted = _plain(name)
    for app in APPS:
        if wanted and wanted in (_plain(app.name), app.key):
            return app
    installed = ", ".join(app.name for app in APPS)
    raise DeviceError("unknown_app", f"no app named {name!r}; installed apps: {installed}")


class Launcher(Screen):
    """The home screen: a grid of app icons (TextViews, as in Launcher3), no app bar."""
    app, name, title = LAUNCHER, "launcher", None

    def content(self, top: int) -> list[View]:
        width = self.nav.size[0]
        cell_w = width // COLUMNS
        icons = []
        for k, app in enumerate(APPS):
            left = (k % COLUMNS) * cell_w
            y = STATUS_H + GRID_TOP + (k // COLUMNS) * CELL_H
            icons.append(View("android.widget.TextView", (left, y, left + cell_w, y + CELL_H),
                              text=app.name, desc=app.name, rid=self.rid("icon"),
                              style="app_icon", clickable=True, focusable=True,
                              on_tap=lambda app=app: self.nav.open(app.name)))
        return icons


class Navigator:
    """The phone's data and back stack; screens reach it as their ``nav``.

    ``open`` is a cold start: the app always opens on its main screen, whatever was left open.
    """

    def __init__(self, data: dict, size: tuple[int, int]):
        self.data = data
        self.size = size
        self.stack: list[Screen] = [Launcher(self)]

    @property
    def top(self) -> Screen:
        return self.stack[-1]

    def push(self, screen: Screen) -> None:
        self.stack.append(screen)

    def pop(self) -> None:
        if len(self.stack) > 1:
            self.stack.pop()

    def back(self) -> None:
        """Back closes a dialog first, else leaves the screen (an app's main screen → home)."""
        if self.top.dialog:
            self.top.dismiss()
        else:
            self.pop()

    def home(self) -> None:
        del self.stack[1:]

    def open(self, name: str) -> None:
        app = find_app(name)
        self.home()
        self.push(app.main(self))

    def current_app(self) -> str:
        key = self.top.app
        return LAUNCHER if key == LAUNCHER else next(a.name for a in APPS if a.key == key)
