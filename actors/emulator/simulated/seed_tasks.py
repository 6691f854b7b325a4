"""Seed tasks: the templates of :mod:`.tasks` with parameters the fixed suite never uses.

UI-Genie's generation 0 learns the action format and simple skills from demonstrations; here they
are the scripted references of these tasks. Names, phone numbers, to-do texts and alarm times are
new, so exploration and held-out tasks (drawn from :func:`.tasks.task_suite`) stay unseen. The
templates with a closed parameter set (three switches, dark theme, three font sizes) contribute a
few of their tasks, which a run then keeps out of exploration and held-out.
Combinations of two apps and level-3 tasks (scrolling, editing) are never seeds.
"""
from __future__ import annotations

from .tasks import SimTask, TEMPLATES

NAMES = (("Adam Stone", "555-0231"), ("Bella Ford", "555-0242"), ("Carlos Diaz", "555-0253"),
         ("Dina Haas", "555-0264"), ("Eric Lund", "555-0275"), ("Fiona Gray", "555-0286"),
         ("Amir Karimi", "555-0297"), ("Bianca Russo", "555-0308"), ("Cyrus Vance", "555-0319"),
         ("Dora Klein", "555-0321"))
TODOS = ("Buy eggs", "Email the landlord", "Wash the car", "Call grandma", "Pick up laundry",
         "Book a flight", "Paint the fence", "Read a book", "Mow the lawn", "Bake bread",
         "Feed the cat", "Plan the trip")
TIMES = ((5, 30), (6, 15), (8, 30), (10, 0), (10, 45), (11, 20), (13, 15), (14, 0), (16, 40),
         (19, 0), (20, 30), (23, 10))
# closed parameter sets: these suite tasks become seeds and leave exploration and held-out
CLOSED = (("toggle_setting", "wifi", False), ("toggle_setting", "bluetooth", True),
          ("toggle_setting", "airplane", True), ("dark_theme", True), ("font_size", "small"))


def _specs() -> list[tuple]:
    """Interleaved by template, so the first N seeds cover every skill."""
    per_template = [
        [("add_contact", n, p) for n, p in NAMES],
        [("delete_contact", n) for n, _ in NAMES[:6]],
        [("add_todo", t) for t in TODOS],
        [("complete_todo", t, i % 3 != 2) for i, t in enumerate(TODOS)],
        [("delete_todo", t) for t in TODOS[::-1]],
        [("add_alarm", h, m) for h, m in TIMES],
        [("toggle_alarm", h, m, i % 2 == 0) for i, (h, m) in enumerate(TIMES[::-1])],
        list(CLOSED)]
    out = []
    for i in range(max(len(x) for x in per_template)):
        out += [x[i] for x in per_template if i < len(x)]
    return out


def seed_suite(levels: tuple[int, ...] = (1, 2)) -> list[SimTask]:
    """Seed tasks of the given levels, in a fixed order that cycles through the templates."""
    tasks = [TEMPLATES[spec[0]](*spec[1:]) for spec in _specs()]
    return [t for t in tasks if t.level in levels]

