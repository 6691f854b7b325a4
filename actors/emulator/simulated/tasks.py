"""The simulated task suite: ~12 task families (templates) × parameters, levels 1–3.

Each template is a function of its parameters, so held-out tasks can be made from parameters the
suite never uses (``TEMPLATES["add_contact"]("Zoe Park", "555-0999")``). A task carries its
initial state, a success predicate on the final state and a scripted reference solution whose
steps name elements by their visible label and are resolved on the live screen
(see :mod:`.reference`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from .checks import (all_of, alarm_on_is, drop_alarm, drop_contact, drop_todo, ensure_alarm,
                     ensure_contact, ensure_todo, only_contact_gone, only_todo_gone, phone_is,
                     set_setting, setting_is, staged, todo_done_is, todo_exists)
from .contacts import visible_rows
from .settings import SWITCHES
from .state import FONT_SIZES, clock, default_state, same_text

Step = tuple[str, ...]
State = dict[str, Any]
SCREEN_HEIGHT = 1200                 # the default device height the levels are judged for


@dataclass
class SimTask:
    """``level``: 1 = one or two steps, 2 = a form or a sub-screen, 3 = several screens, two
    apps or scrolling. ``check`` must be False on ``initial_state`` and True once done."""
    id: str
    goal: str
    level: int
    app: str
    template: str
    initial_state: State
    check: Callable[[State], bool]
    reference: tuple[Step, ...]


@dataclass(frozen=True)
class _Part:
    """One sub-goal: how to set the stage, how to check it and how to do it (no terminate)."""
    id: str
    goal: str
    level: int
    app: str
    template: str
    prepare: Callable[[State], None]
    check: Callable[[State], bool]
    steps: tuple[Step, ...]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")


# --- templates (each returns a _Part) ------------------------------------------------------------
def _toggle_setting(key: str, on: bool) -> _Part:
    label = SWITCHES[key]
    return _Part(f"settings.{_slug(key)}.{'on' if on else 'off'}",
                 f"Turn {'on' if on else 'off'} {label}.", 1, "Settings", "toggle_setting",
                 partial(set_setting, key, not on), partial(setting_is, key, on),
                 (("open", "Settings"), ("click", label)))


def _dark_theme(on: bool) -> _Part:
    goal = "Switch the phone to dark theme." if on else "Turn off dark theme."
    return _Part(f"settings.dark-theme.{'on' if on else 'off'}", goal, 2, "Settings", "dark_theme",
                 partial(set_setting, "dark_theme", not on), partial(setting_is, "dark_theme", on),
                 (("open", "Settings"), ("click", "Display"), ("click", "Dark theme")))


def _font_size(size: str) -> _Part:
    if size not in FONT_SIZES:
        raise ValueError(f"font size must be one of {FONT_SIZES}, got {size!r}")
    start = "large" if size == "default" else "default"
    return _Part(f"settings.font-size.{size}", f"Set the font size to {size}.", 2, "Settings",
                 "font_size", partial(set_setting, "font_size", start),
                 partial(setting_is, "font_size", size),
                 (("open", "Settings"), ("click", "Display"), ("click", size.capitalize())))


def _add_contact(name: str, phone: str) -> _Part:
    return _Part(f"contacts.add.{_slug(name)}", f"Add a contact named {name} with phone number "
                 f"{phone}.", 2, "Contacts", "add_contact", partial(drop_contact, name),
                 partial(phone_is, name, phone),
                 (("open", "Contacts"), ("click", "Add contact"), ("click", "Name"), ("type", name),
                  ("click", "Phone"), ("type", phone), ("click", "Save")))


def _delete_contact(name: str) -> _Part:
    """Level 3 when the contact is below the first screenful of the list (needs a swipe)."""
    prepare = partial(ensure_contact, name, "")
    names = [c["name"] for c in staged(prepare)["contacts"]]
    others = tuple(n for n in names if not same_text(n, name))
    below = [same_text(n, name) for n in names].index(True) >= visible_rows(SCREEN_HEIGHT)
    return _Part(f"contacts.delete.{_slug(name)}", f"Delete {name} from my contacts.",
                 3 if below else 2, "Contacts", "delete_contact", prepare,
                 partial(only_contact_gone, name, others),
                 (("open", "Contacts"), ("scroll_to", name), ("click", name), ("click", "Delete")))


def _edit_phone(name: str, phone: str) -> _Part:
    return _Part(f"contacts.edit-phone.{_slug(name)}", f"Change {name}'s phone number to {phone}.",
                 3, "Contacts", "edit_phone", partial(ensure_contact, name, phone),
                 partial(phone_is, name, phone),
                 (("open", "Contacts"), ("scroll_to", name), ("click", name), ("click", "Edit"),
                  ("click", "Clear phone"), ("type", phone), ("click", "Save")))


def _add_todo(text: str) -> _Part:
    return _Part(f"todo.add.{_slug(text)}", f"Add '{text}' to my to-do list.", 2, "To-do",
                 "add_todo", partial(drop_todo, text), partial(todo_exists, text),
                 (("open", "To-do"), ("click", "Add task"), ("click", "Task"), ("type", text),
                  ("click", "Save")))


def _complete_todo(text: str, done: bool) -> _Part:
    goal = f"Mark '{text}' as done." if done else f"Mark '{text}' as not done yet."
    return _Part(f"todo.{'done' if done else 'undone'}.{_slug(text)}", goal, 1, "To-do",
                 "complete_todo", partial(ensure_todo, text, not done),
                 partial(todo_done_is, text, done), (("open", "To-do"), ("click", text)))


def _delete_todo(text: str) -> _Part:
    prepare = partial(ensure_todo, text, None)
    others = tuple(t["text"] for t in staged(prepare)["todo"] if not same_text(t["text"], text))
    return _Part(f"todo.delete.{_slug(text)}", f"Remove '{text}' from my to-do list.", 2, "To-do",
                 "delete_todo", prepare, partial(only_todo_gone, text, others),
                 (("open", "To-do"), ("long_press", text), ("click", "Delete")))


def _add_alarm(hour: int, minute: int) -> _Part:
    return _Part(f"clock.add.{hour:02d}-{minute:02d}", f"Set an alarm for {hour}:{minute:02d}.", 2,
                 "Clock", "add_alarm", partial(drop_alarm, hour, minute),
                 partial(alarm_on_is, hour, minute, True),
                 (("open", "Clock"), ("click", "Add alarm"), ("click", "Hour"), ("type", str(hour)),
                  ("click", "Minute"), ("type", f"{minute:02d}"), ("click", "Save")))


def _toggle_alarm(hour: int, minute: int, on: bool) -> _Part:
    return _Part(f"clock.alarm-{'on' if on else 'off'}.{hour:02d}-{minute:02d}",
                 f"Turn {'on' if on else 'off'} the {hour}:{minute:02d} alarm.", 1, "Clock",
                 "toggle_alarm", partial(ensure_alarm, hour, minute, not on),
                 partial(alarm_on_is, hour, minute, on),
                 (("open", "Clock"), ("click", clock(hour, minute))))


PARTS: dict[str, Callable[..., _Part]] = {
    "toggle_setting": _toggle_setting, "dark_theme": _dark_theme, "font_size": _font_size,
    "add_contact": _add_contact, "delete_contact": _delete_contact, "edit_phone": _edit_phone,
    "add_todo": _add_todo, "complete_todo": _complete_todo, "delete_todo": _delete_todo,
    "add_alarm": _add_alarm, "toggle_alarm": _toggle_alarm}


# --- tasks ---------------------------------------------------------------------------------------
def _task(part: _Part) -> SimTask:
    state = default_state()
    part.prepare(state)
    return SimTask(part.id, part.goal, part.level, part.app, part.template, state, part.check,
                   part.steps + (("terminate", "success"),))


def combo_task(first: tuple, second: tuple) -> SimTask:
    """Two sub-goals in two apps, e.g. ``combo_task(("toggle_setting", "wifi", False),
    ("add_todo", "Pack charger"))``; always level 3."""
    a, b = PARTS[first[0]](*first[1:]), PARTS[second[0]](*second[1:])
    state = default_state()
    a.prepare(state)
    b.prepare(state)
    goal = f"{a.goal.rstrip('.')}, then {b.goal[0].lower()}{b.goal[1:]}"
    return SimTask(f"combo.{a.id}+{b.id}", goal, 3, f"{a.app}+{b.app}", "combo", state,
                   partial(all_of, (a.check, b.check)),
                   a.steps + (("home",),) + b.steps + (("terminate", "success"),))


def _single(name: str, *params: Any) -> SimTask:
    return _task(PARTS[name](*params))


TEMPLATES: dict[str, Callable[..., SimTask]] = {name: partial(_single, name) for name in PARTS}
TEMPLATES["combo"] = combo_task

SUITE: tuple[tuple, ...] = (
    *(("toggle_setting", key, on) for key in SWITCHES for on in (False, True)),
    ("dark_theme", True), ("dark_theme", False),
    ("font_size", "small"), ("font_size", "large"), ("font_size", "default"),
    *(("add_contact", n, p) for n, p in (
        ("Alice Chen", "555-0142"), ("Bruno Silva", "555-0175"), ("Carla Mendes", "555-0133"),
        ("David Kim", "555-0188"), ("Emma Novak", "555-0121"), ("Felix Wagner", "555-0164"),
        ("Grace Liu", "555-0157"), ("Hugo Martin", "555-0119"))),
    *(("delete_contact", n) for n in ("Beatriz Costa", "Elena Petrova", "George Miller",
                                      "Kofi Mensah", "Laura Rossi", "Nadia Rahman")),
    *(("edit_phone", n, p) for n, p in (
        ("Chen Wei", "555-0177"), ("Daniel Okafor", "555-0166"), ("Ivan Horvat", "555-0181"),
        ("Julia Schmidt", "555-0148"), ("Mateo Garcia", "555-0139"))),
    *(("add_todo", t) for t in ("Buy batteries", "Renew passport", "Clean the garage",
                                "Send birthday card", "Fix the bike", "Order printer ink",
                                "Walk the dog", "Cancel gym membership")),
    ("complete_todo", "Buy milk", True), ("complete_todo", "Call the bank", True),
    ("complete_todo", "Water the plants", True), ("complete_todo", "Return library books", True),
    ("complete_todo", "Pay rent", True), ("complete_todo", "Book dentist appointment", False),
    *(("delete_todo", t) for t in ("Buy milk", "Call the bank", "Pay rent",
                                   "Book dentist appointment", "Return library books")),
    *(("add_alarm", h, m) for h, m in ((6, 0), (6, 45), (7, 15), (8, 0), (9, 30), (12, 0),
                                       (18, 20), (22, 5))),
    ("toggle_alarm", 6, 30, False), ("toggle_alarm", 7, 0, False), ("toggle_alarm", 7, 45, True),
    ("toggle_alarm", 9, 0, True), ("toggle_alarm", 21, 15, False),
    ("combo", ("toggle_setting", "wifi", False), ("add_todo", "Pack charger")),
    ("combo", ("add_contact", "Omar Farouk", "555-0190"), ("add_alarm", 7, 10)),
    ("combo", ("toggle_setting", "bluetooth", True), ("complete_todo", "Pay rent", True)),
    ("combo", ("dark_theme", True), ("add_alarm", 22, 30)),
    ("combo", ("add_todo", "Call Hana"), ("toggle_alarm", 7, 0, False)),
    ("combo", ("toggle_setting", "airplane", True), ("delete_todo", "Water the plants")),
)


def task_suite() -> list[SimTask]:
    """The fixed suite, in a fixed order with unique ids (68 tasks)."""
    return [TEMPLATES[spec[0]](*spec[1:]) for spec in SUITE]
