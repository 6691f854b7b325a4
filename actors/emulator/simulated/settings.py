"""Settings app: three switches on the main screen, Display (dark theme, font size) and About."""
from __future__ import annotations

from .state import FONT_SIZES
from .widgets import (PAD, RECYCLER, ROW_H, Screen, View, group, label, nav_row, radio,
                      switch)

SWITCHES = {"wifi": "Wi-Fi", "bluetooth": "Bluetooth", "airplane": "Airplane mode"}
ABOUT = (("Device name", "Evoray Sim"), ("Model", "SIM-540"), ("Android version", "14"),
         ("Build number", "EVR.240101.001"))


class SettingsMain(Screen):
    app, name, title, root_of_app = "settings", "settings/main", "Settings", True

    def content(self, top: int) -> list[View]:
        width, height = self.nav.size
        settings = self.nav.data["settings"]
        rows = []
        for k, (key, text) in enumerate(SWITCHES.items()):
            y = top + k * ROW_H
            rows.append(switch((0, y, width, y + ROW_H), text, settings[key],
                               lambda key=key: self._toggle(key), self.rid(f"switch_{key}")))
        y = top + len(SWITCHES) * ROW_H
        rows.append(nav_row((0, y, width, y + ROW_H), "Display", "Dark theme, font size",
                            lambda: self.nav.push(DisplayScreen(self.nav)), self.rid("display")))
        y += ROW_H
        rows.append(nav_row((0, y, width, y + ROW_H), "About phone", "Name, Android version",
                            lambda: self.nav.push(AboutScreen(self.nav)), self.rid("about")))
        return [group((0, top, width, height), rows, self.rid("list"), RECYCLER)]

    def _toggle(self, key: str) -> None:
        settings = self.nav.data["settings"]
        settings[key] = not settings[key]


class DisplayScreen(Screen):
    app, name, title = "settings", "settings/display", "Display"

    def content(self, top: int) -> list[View]:
        width = self.nav.size[0]
        settings = self.nav.data["settings"]
        views = [switch((0, top, width, top + ROW_H), "Dark theme", settings["dark_theme"],
                        self._toggle_dark, self.rid("dark_theme"))]
        y = top + ROW_H
        views.append(label((PAD, y, width - PAD, y + 80), "Font size", self.rid("font_size_title"),
                           style="heading"))
        y += 80
        radios = []
        for k, size in enumerate(FONT_SIZES):
            box = (0, y + k * ROW_H, width, y + (k + 1) * ROW_H)
            radios.append(radio(box, size.capitalize(), settings["font_size"] == size,
                                lambda size=size: self._set_font(size), self.rid(f"font_{size}")))
        views.append(View("android.widget.RadioGroup", (0, y, width, y + len(FONT_SIZES) * ROW_H),
                          rid=self.rid("font_size"), children=radios))
        return views

    def _toggle_dark(self) -> None:
        settings = self.nav.data["settings"]
        settings["dark_theme"] = not settings["dark_theme"]

    def _set_font(self, size: str) -> None:
        self.nav.data["settings"]["font_size"] = size


class AboutScreen(Screen):
    app, name, title = "settings", "settings/about", "About phone"

    def content(self, top: int) -> list[View]:
        width = self.nav.size[0]
        rows = []
        for k, (key, value) in enumerate(ABOUT):
            y = top + k * ROW_H
            rows.append(group((0, y, width, y + ROW_H), [
                label((PAD, y + 12, width - PAD, y + 62), key),
                label((PAD, y + 62, width - PAD, y + ROW_H - 12), value, style="subtext")]))
        return rows
