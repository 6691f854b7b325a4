"""Success predicates and stage setters of the simulated tasks, on the plain state dict.

Module-level functions (bound to their parameters with ``functools.partial`` in :mod:`.tasks`) so
that tasks pickle with the standard library, not only with cloudpickle.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from .state import default_state, digits, same_text, sort_alarms, sort_contacts

State = dict[str, Any]


def find_contact(state: State, name: str):
    return next((c for c in state["contacts"] if same_text(c["name"], name)), None)


def find_todo(state: State, text: str):
    return next((t for t in state["todo"] if same_text(t["text"], text)), None)


def find_alarm(state: State, hour: int, minute: int):
    return next((a for a in state["alarms"] if (a["hour"], a["minute"]) == (hour, minute)), None)


def setting_is(key: str, value: Any, s: State) -> bool:
    return s["settings"].get(key) == value


def phone_is(name: str, phone: str, s: State) -> bool:
    found = find_contact(s, name)
    return found is not None and digits(found["phone"]) == digits(phone)


def only_contact_gone(name: str, others: tuple[str, ...], s: State) -> bool:
    return find_contact(s, name) is None and all(find_contact(s, n) for n in others)


def todo_exists(text: str, s: State) -> bool:
    return find_todo(s, text) is not None


def todo_done_is(text: str, done: bool, s: State) -> bool:
    found = find_todo(s, text)
    return found is not None and found["done"] is done


def only_todo_gone(text: str, others: tuple[str, ...], s: State) -> bool:
    return find_todo(s, text) is None and all(find_todo(s, o) for o in others)


def alarm_on_is(hour: int, minute: int, on: bool, s: State) -> bool:
    found = find_alarm(s, hour, minute)
    return found is not None and found["on"] is on


def all_of(checks: tuple[Callable[[State], bool], ...], s: State) -> bool:
    return all(check(s) for check in checks)


def set_setting(key: str, value: Any, s: State) -> None:
    s["settings"][key] = value


def drop_contact(name: str, s: State) -> None:
    s["contacts"] = [c for c in s["contacts"] if not same_text(c["name"], name)]


def ensure_contact(name: str, not_phone: str, s: State) -> None:
    """The contact exists (added if the name is new) and its number is not ``not_phone``."""
    found = find_contact(s, name)
    if found is None:
        s["contacts"].append(found := {"name": name, "phone": "555-0100"})
        sort_contacts(s["contacts"])
    if digits(found["phone"]) == digits(not_phone):
        found["phone"] = "555-0199" if digits(not_phone) != "5550199" else "555-0198"


def drop_todo(text: str, s: State) -> None:
    s["todo"] = [t for t in s["todo"] if not same_text(t["text"], text)]


def ensure_todo(text: str, done: Optional[bool], s: State) -> None:
    found = find_todo(s, text)
    if found is None:
        s["todo"].append(found := {"text": text, "done": False})
    if done is not None:
        found["done"] = done


def drop_alarm(hour: int, minute: int, s: State) -> None:
    s["alarms"] = [a for a in s["alarms"] if (a["hour"], a["minute"]) != (hour, minute)]


def ensure_alarm(hour: int, minute: int, on: bool, s: State) -> None:
    found = find_alarm(s, hour, minute)
    if found is None:
        s["alarms"].append(found := {"hour": hour, "minute": minute, "on": on})
        sort_alarms(s["alarms"])
    found["on"] = on


def staged(prepare: Callable[[State], None]) -> State:
    """The default state after ``prepare``: what a single-part task starts from."""
    state = default_state()
    prepare(state)
    return state
