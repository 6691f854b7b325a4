"""One step of an episode on a device: observe the screen, execute an action, record what happened.

Everything that can go wrong in one step — a malformed tool call, a coordinate off the screen, an
app that is not installed — becomes a per-step error string in the trajectory; only a crashed
device (``DeviceCrashed``) escapes, so the pool can restart it.
"""
from __future__ import annotations

from typing import Optional

from actors.emulator.actions import Action, ActionError, perform, scale_to_device
from actors.emulator.device import DeviceError
from actors.emulator.uitree import label_at, parse_hierarchy


def execute(device, action: Action, model_size: tuple[int, int]) -> None:
    """Carry out one action on ``device`` (coordinates scaled from the model's space to device
    pixels). Raises ActionError (out_of_screen) or DeviceError (unknown_app, ...) for a bad step;
    ``terminate`` does nothing on the device."""
    perform(device, scale_to_device(action, model_size, device.size))


def try_execute(device, action: Action, model_size: tuple[int, int]) -> Optional[str]:
    """``execute``, with a bad step returned as its error text (None when the step worked)."""
    try:
        execute(device, action, model_size)
    except (ActionError, DeviceError) as e:
        return str(e)
    return None


def describe(action: Action, xml: Optional[str] = None) -> str:
    """A short text of an action for histories: 'click "Wi-Fi"' when the element under the tap is
    known, else the tool call's essentials ('click (270, 310)', 'type "Alice"', 'open Contacts')."""
    if action.kind in ("click", "long_press"):
        label = label_at(parse_hierarchy(xml), action.x, action.y) if xml is not None else None
        return f'{action.kind} "{label}"' if label else f"{action.kind} ({action.x}, {action.y})"
    if action.kind == "swipe":
        return f"swipe {action.direction}"
    if action.kind == "type":
        return f'type "{action.text}"'
    if action.kind == "wait":
        return f"wait {action.time}s"
    return f"{action.kind} {action.text}"
