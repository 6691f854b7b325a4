"""The simulated phone's data: one plain JSON-able dict, its default contents and its invariants.

Everything the apps show is derived from this dict (plus per-screen UI state such as scroll
position and half-typed form fields), so a task's success can be checked on the dict alone.
"""
from __future__ import annotations

import copy
import json
import random
from typing import Any

SETTINGS = {"wifi": True, "bluetooth": False, "airplane": False, "dark_theme": False,
            "font_size": "default"}
FONT_SIZES = ("small", "default", "large")
CONTACTS = (("Aaron Blake", "555-0101"), ("Beatriz Costa", "555-0102"), ("Chen Wei", "555-0103"),
            ("Daniel Okafor", "555-0104"), ("Elena Petrova", "555-0105"),
            ("Farah Haddad", "555-0106"), ("George Miller", "555-0107"),
            ("Hana Suzuki", "555-0108"), ("Ivan Horvat", "555-0109"),
            ("Julia Schmidt", "555-0110"), ("Kofi Mensah", "555-0111"),
            ("Laura Rossi", "555-0112"), ("Mateo Garcia", "555-0113"),
            ("Nadia Rahman", "555-0114"))
TODO = (("Buy milk", False), ("Call the bank", False), ("Pay rent", False),
        ("Water the plants", False), ("Book dentist appointment", True),
        ("Return library books", False))
ALARMS = ((6, 30, True), (7, 0, True), (7, 45, False), (9, 0, False), (21, 15, True))
SECTIONS = ("settings", "contacts", "todo", "alarms")


def default_state(seed: int = 0) -> dict[str, Any]:
    """The phone as shipped. Seed 0 is the canonical data the task suite is written against;
    another seed draws other phone numbers (deterministically) for variety."""
    rng = random.Random(seed)
    phones = [p if seed == 0 else f"555-{rng.randrange(200, 10000):04d}" for _, p in CONTACTS]
    return {"settings": dict(SETTINGS),
            "contacts": [{"name": n, "phone": p} for (n, _), p in zip(CONTACTS, phones)],
            "todo": [{"text": t, "done": d} for t, d in TODO],
            "alarms": [{"hour": h, "minute": m, "on": on} for h, m, on in ALARMS]}


def normalized(state: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """A deep, JSON-clean copy of ``state`` with missing sections / settings filled from the
    defaults and lists in the order the apps keep them. Raises ValueError on unknown sections."""
    try:
        state = json.loads(json.dumps(state))
    except (TypeError, ValueError) as e:
        raise ValueError(f"state must be JSON-able: {e}") from None
    unknown = sorted(set(state) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown state sections {unknown}; expected some of {list(SECTIONS)}")
    full = default_state(seed)
    full["settings"].update(state.get("settings", {}))
    for key in ("contacts", "todo", "alarms"):
        if key in state:
            full[key] = copy.deepcopy(state[key])
    sort_contacts(full["contacts"])
    sort_alarms(full["alarms"])
    return full


def sort_contacts(contacts: list[dict]) -> None:
    """In place, so screens holding a contact dict keep pointing at the same object."""
    contacts.sort(key=lambda c: c["name"].casefold())


def sort_alarms(alarms: list[dict]) -> None:
    alarms.sort(key=lambda a: (a["hour"], a["minute"]))


def digits(phone: str) -> str:
    """Phone numbers compare by their digits: "555-0142" == "5550142"."""
    return "".join(ch for ch in phone if ch.isdigit())


def same_text(a: str, b: str) -> bool:
    """Names and to-do texts compare case-insensitively, whitespace collapsed."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"
