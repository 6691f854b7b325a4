"""UI-Genie's action space: Qwen2.5-VL ``mobile_use`` tool calls, parsing, scaling, click matching.

The model answers with ``<tool_call>{"name": "mobile_use", "arguments": {"action": KIND, ...}}</tool_call>``
where the arguments per kind are click{coordinate}, long_press{coordinate, time}, swipe{direction},
type{text}, open{text}, system_button{button}, wait{time}, terminate{status}. Coordinates live in the
model's resized-image space and are scaled to device pixels before acting.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Optional

KINDS = ("click", "long_press", "swipe", "type", "open", "system_button", "wait", "terminate")
DIRECTIONS = ("up", "down", "left", "right")
BUTTONS = ("Back", "Home")
STATUSES = ("success", "failure")
CLICK_RADIUS = 0.14                          # fraction of the screen diagonal (AndroidControl rule)
Size = tuple[int, int]
Point = tuple[int, int]


class ActionError(ValueError):
    """An invalid or unparsable action; ``code`` is a short machine tag for counting failures.

    Codes: no_tool_call, bad_json, wrong_tool, unknown_action, missing_argument, bad_argument,
    out_of_screen.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Action:
    """One UI action. ``text`` carries the typed text, the app name (open), the button
    (system_button: Back|Home) or the status (terminate: success|failure); ``time`` is in seconds."""
    kind: str
    x: Optional[int] = None
    y: Optional[int] = None
    direction: Optional[str] = None
    text: Optional[str] = None
    time: Optional[float] = None

    def __post_init__(self) -> None:
        _validate(self)

    def to_tool_call(self) -> str:
        """The model's output format for this action (inverse of :func:`parse_action`)."""
        args: dict[str, Any] = {"action": self.kind}
        if self.kind in ("click", "long_press"):
            args["coordinate"] = [self.x, self.y]
        if self.kind == "swipe":
            args["direction"] = self.direction
        if self.kind in ("type", "open"):
            args["text"] = self.text
        if self.kind == "system_button":
            args["button"] = self.text
        if self.kind == "terminate":
            args["status"] = self.text
        if self.kind in ("long_press", "wait"):
            args["time"] = self.time
        call = {"name": "mobile_use", "arguments": args}
        return f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"


def _validate(a: Action) -> None:
    """Per-kind argument rules; raises ActionError (unknown_action, missing_argument, bad_argument)."""
    if a.kind not in KINDS:
        raise ActionError("unknown_action", f"action {a.kind!r} is not one of {', '.join(KINDS)}")
    if a.kind in ("click", "long_press"):
        if a.x is None or a.y is None:
            raise ActionError("missing_argument", f"{a.kind} needs a coordinate [x, y]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a.x, a.y)):
            raise ActionError("bad_argument", f"{a.kind} coordinate must be integers, got {a.x!r}, {a.y!r}")
    if a.kind in ("long_press", "wait"):
        if a.time is None:
            raise ActionError("missing_argument", f"{a.kind} needs a time in seconds")
        if not _is_number(a.time) or a.time <= 0:
            raise ActionError("bad_argument", f"{a.kind} time must be a positive number, got {a.time!r}")
    allowed = {"swipe": DIRECTIONS, "system_button": BUTTONS, "terminate": STATUSES}.get(a.kind)
    value = a.direction if a.kind == "swipe" else a.text
    if a.kind in ("swipe", "type", "open", "system_button", "terminate"):
        if value is None:
            names = {"swipe": "direction", "system_button": "button", "terminate": "status"}
            name = names.get(a.kind, "text")
            raise ActionError("missing_argument", f"{a.kind} needs {name!r}")
        if not isinstance(value, str) or (allowed and value not in allowed) or not value.strip():
            want = f"one of {', '.join(allowed)}" if allowed else "a non-empty string"
            raise ActionError("bad_argument", f"{a.kind} argument must be {want}, got {value!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _round(v: float) -> int:
    """Round half up (Python's round() is banker's rounding: round(0.5) == 0)."""
    return math.floor(v + 0.5)


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*")


def parse_action(text: str) -> Action:
    """Parse the LAST ``<tool_call>`` block of a model answer into an :class:`Action`.

    Tolerated: prose around the block, a missing ``</tool_call>`` at the end, ``` / ```json fences
    inside the block, arguments the kind does not use (ignored). Strict: name must be "mobile_use",
    coordinates a list of two numbers (rounded half up to int), enum values spelled exactly.
    """
    start = text.rfind("<tool_call>")
    if start < 0:
        raise ActionError("no_tool_call", "no <tool_call> block in the answer")
    body = text[start + len("<tool_call>"):]
    end = body.find("</tool_call>")
    body = _FENCE.sub("", body if end < 0 else body[:end])
    try:
        call, _ = json.JSONDecoder().raw_decode(body.strip())   # raw_decode: ignores trailing ``` / prose
    except json.JSONDecodeError as e:
        raise ActionError("bad_json", f"tool call is not valid JSON ({e.msg} at {e.pos})") from None
    if not isinstance(call, dict):
        raise ActionError("bad_json", f"tool call must be a JSON object, got {type(call).__name__}")
    if call.get("name") != "mobile_use":
        raise ActionError("wrong_tool", f"tool name must be 'mobile_use', got {call.get('name')!r}")
    args = call.get("arguments")
    if args is None:
        raise ActionError("missing_argument", "tool call has no 'arguments'")
    if not isinstance(args, dict):
        raise ActionError("bad_argument", "'arguments' must be a JSON object")
    if "action" not in args:
        raise ActionError("missing_argument", "arguments have no 'action'")
    kind = args["action"]
    x = y = None
    if kind in ("click", "long_press") and "coordinate" in args:
        x, y = _coordinate(args["coordinate"])
    text_key = {"system_button": "button", "terminate": "status"}.get(kind, "text")
    return Action(kind=kind if isinstance(kind, str) else repr(kind), x=x, y=y,
                  direction=args.get("direction") if kind == "swipe" else None,
                  text=args.get(text_key) if kind in ("type", "open", "system_button", "terminate") else None,
                  time=args.get("time") if kind in ("long_press", "wait") else None)


def _coordinate(value: Any) -> Point:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise ActionError("bad_argument", f"coordinate must be a list of two numbers [x, y], got {value!r}")
    return _round(value[0]), _round(value[1])


def _scale(action: Action, src: Size, dst: Size) -> Action:
    if action.x is None or action.y is None:
        return action
    return replace(action, x=_round(action.x * dst[0] / src[0]), y=_round(action.y * dst[1] / src[1]))


def scale_to_device(action: Action, model_size: Size, device_size: Size) -> Action:
    """Model-image coordinates → device pixels: x·W_dev/W_model, y·H_dev/H_model, rounded half up.

    Actions without coordinates are returned unchanged. Raises ActionError("out_of_screen") unless
    the result lies in [0, W_dev) × [0, H_dev).
    """
    scaled = _scale(action, model_size, device_size)
    if scaled.x is not None and not (0 <= scaled.x < device_size[0] and 0 <= scaled.y < device_size[1]):
        raise ActionError("out_of_screen", f"({scaled.x}, {scaled.y}) is outside the "
                                           f"{device_size[0]}x{device_size[1]} screen")
    return scaled


def scale_to_model(action: Action, model_size: Size, device_size: Size) -> Action:
    """Device pixels → model-image coordinates (inverse of :func:`scale_to_device`, rounded half up)."""
    return _scale(action, device_size, model_size)


def swipe_vector(direction: str, screen_size: Size) -> tuple[int, int, int, int]:
    """Start and end (x1, y1, x2, y2) of a swipe; ``direction`` is where the FINGER moves.

    "up": the finger goes from 3/4 to 1/4 of the height through the middle column, so the content
    scrolls up and what lies BELOW comes into view; "left"/"right" likewise across 3/4 ↔ 1/4 of the
    width. This is the only convention used here. UI-Genie's evaluation code reverses it (its "up"
    means the content moves down), so reference data from there must be flipped on import.
    """
    w, h = screen_size
    cx, cy = w // 2, h // 2
    lo_x, hi_x, lo_y, hi_y = w // 4, (3 * w) // 4, h // 4, (3 * h) // 4
    vectors = {"up": (cx, hi_y, cx, lo_y), "down": (cx, lo_y, cx, hi_y),
               "left": (hi_x, cy, lo_x, cy), "right": (lo_x, cy, hi_x, cy)}
    if direction not in vectors:
        raise ActionError("bad_argument", f"swipe direction must be one of {', '.join(DIRECTIONS)}, "
                                          f"got {direction!r}")
    return vectors[direction]


MAX_WAIT_S = 5.0


def perform(device, action: Action) -> None:
    """Carry out ``action`` (device pixels) through the Device methods; ``terminate`` touches
    nothing, a wait is capped at ``MAX_WAIT_S``. Every executor of an action — the agent's steps,
    the tasks' reference solutions — goes through here."""
    if action.kind == "click":
        device.tap(action.x, action.y)
    elif action.kind == "long_press":
        device.long_press(action.x, action.y, action.time)
    elif action.kind == "swipe":
        device.swipe(*swipe_vector(action.direction, device.size))
    elif action.kind == "type":
        device.type_text(action.text)
    elif action.kind == "open":
        device.open_app(action.text)
    elif action.kind == "system_button":
        device.press(action.text.lower())
    elif action.kind == "wait":
        device.wait(min(action.time, MAX_WAIT_S))


def click_matches(pred: Point, target_bounds: Optional[tuple[int, int, int, int]],
                  target_point: Optional[Point], screen_size: Size) -> bool:
    """A click is correct if inside the target's bounds (l ≤ x ≤ r, t ≤ y ≤ b) or within
    0.14 × screen diagonal of the target point (Euclidean, inclusive).

    E.g. 1080×2400: diagonal √(1080² + 2400²) ≈ 2631.8, threshold ≈ 368.45 px.
    """
    if target_bounds is None and target_point is None:
        raise ValueError("click_matches needs target_bounds or target_point")
    x, y = pred
    if target_bounds is not None:
        left, top, right, bottom = target_bounds
        if left <= x <= right and top <= y <= bottom:
            return True
    if target_point is not None:
        radius = CLICK_RADIUS * math.hypot(*screen_size)
        return math.hypot(x - target_point[0], y - target_point[1]) <= radius
    return False
