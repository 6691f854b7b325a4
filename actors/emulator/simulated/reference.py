"""Running a task's scripted reference solution and recording it as concrete actions.

Reference steps name elements by their visible label (``("click", "Save")``); each is resolved
on the screen as it is at that moment, so the recorded coordinates are always those of the live
element's centre. The recording (screen id and hierarchy before each action, the action, the
target's bounds) is what reward-model data and sanity checks are built from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from actors.emulator.uitree import Bounds, element_at, find, parse_hierarchy
from actors.emulator.actions import Action, perform

if TYPE_CHECKING:
    from .device import SimulatedDevice
    from .tasks import SimTask, Step

Record = tuple[str, str, Action, Optional[Bounds]]
MAX_SCROLLS = 10
LONG_PRESS_S = 1.0


def setup(task: "SimTask", device: "SimulatedDevice") -> None:
    """Put the device in the task's initial state, on the home screen."""
    device.load_state(task.initial_state)


def reference_actions(task: "SimTask", device: "SimulatedDevice") -> list[Record]:
    """Set the task up on ``device``, run its reference and return, per action,
    (screen_id before, hierarchy XML before, Action in device pixels, target bounds or None).

    ``("scroll_to", label)`` becomes as many ``swipe up`` actions as it takes for ``label`` to
    appear. A step whose element is not on screen raises LookupError: the reference is wrong.
    """
    setup(task, device)
    records: list[Record] = []
    for step in task.reference:
        if step[0] == "scroll_to":
            records.extend(_scroll_to(device, step[1]))
        else:
            records.append(_run(device, step))
    return records


def _scroll_to(device: "SimulatedDevice", label: str) -> list[Record]:
    records: list[Record] = []
    for _ in range(MAX_SCROLLS):
        if find(parse_hierarchy(device.dump_hierarchy()), label) is not None:
            return records
        records.append(_run(device, ("swipe", "up")))
    raise LookupError(f"{label!r} did not appear after {MAX_SCROLLS} swipes up")


def _run(device: "SimulatedDevice", step: "Step") -> Record:
    screen = device.screen_id()
    xml = device.dump_hierarchy()
    action, bounds = _resolve(step, xml, screen)
    perform(device, action)
    return screen, xml, action, bounds


def _resolve(step: "Step", xml: str, screen: str) -> tuple[Action, Optional[Bounds]]:
    """A high-level step as a concrete Action (plus the bounds of the element it targets)."""
    kind, arg = step[0], (step[1] if len(step) > 1 else "")
    if kind in ("click", "long_press"):
        nodes = parse_hierarchy(xml)
        found = find(nodes, arg)
        if found is None:
            raise LookupError(f"reference step {step}: no element {arg!r} on screen {screen}")
        target = found if (found.clickable or found.long_clickable) else (
            element_at(nodes, *found.center) or found)
        x, y = target.center
        time = LONG_PRESS_S if kind == "long_press" else None
        return Action(kind, x=x, y=y, time=time), target.bounds
    simple = {"type": lambda: Action("type", text=arg), "open": lambda: Action("open", text=arg),
              "swipe": lambda: Action("swipe", direction=arg),
              "back": lambda: Action("system_button", text="Back"),
              "home": lambda: Action("system_button", text="Home"),
              "wait": lambda: Action("wait", time=1.0),
              "terminate": lambda: Action("terminate", text=arg or "success")}
    if kind not in simple:
        raise ValueError(f"unknown reference step kind {kind!r} in {step}")
    return simple[kind](), None
