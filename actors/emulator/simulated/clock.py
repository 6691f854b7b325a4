"""Clock app: the alarm list (each alarm a switch) and a "New alarm" form with hour and minute."""
from __future__ import annotations

from .state import clock, sort_alarms
from .widgets import PAD, Box, Screen, View, button, label, switch

BOTTOM_BAR = 130                     # room for the "Add alarm" button under the list


class AlarmList(Screen):
    app, name, title, root_of_app = "clock", "clock/alarms", "Alarms", True

    def content(self, top: int) -> list[View]:
        width, height = self.nav.size
        alarms = self.nav.data["alarms"]
        views = [self.rows(alarms, (0, top, width, height - BOTTOM_BAR), self._row) if alarms else
                 label((PAD, top + 40, width - PAD, top + 120), "No alarms", style="subtext")]
        views.append(button((PAD, height - BOTTOM_BAR + 17, width - PAD, height - 17), "Add alarm",
                            lambda: self.nav.push(AlarmForm(self.nav)), self.rid("add")))
        return views

    def _row(self, k: int, alarm: dict, box: Box) -> View:
        return switch(box, clock(alarm["hour"], alarm["minute"]), alarm["on"],
                      lambda: self._toggle(alarm), self.rid("alarm"))

    def _toggle(self, alarm: dict) -> None:
        alarm["on"] = not alarm["on"]


class AlarmForm(Screen):
    app, name, title = "clock", "clock/add", "New alarm"

    def content(self, top: int) -> list[View]:
        return self.form(top, [("hour", "Hour"), ("minute", "Minute")], self._save)

    def _save(self) -> None:
        hour = _number(self.fields.get("hour", ""), 23)
        minute = _number(self.fields.get("minute", ""), 59)
        if hour is None or minute is None:
            self.error = "Enter an hour 0-23" if hour is None else "Enter a minute 0-59"
            return
        alarms = self.nav.data["alarms"]
        alarms.append({"hour": hour, "minute": minute, "on": True})
        sort_alarms(alarms)
        self.nav.pop()


def _number(text: str, most: int):
    """The field's value if it is a whole number in 0..most, else None."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 2:
        return None
    value = int(text)
    return value if value <= most else None
