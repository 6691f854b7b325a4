"""The view tree as ``uiautomator dump`` writes it: same header, attribute order and escaping."""
from __future__ import annotations

from xml.sax.saxutils import escape

from .widgets import View

HEADER = "<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"
_ENTITIES = {'"': "&quot;", "\n": "&#10;"}


def to_xml(root: View, package: str) -> str:
    """One line, like the real tool; every node carries the foreground app's package."""
    parts = [HEADER, '<hierarchy rotation="0">']
    _write(root, 0, package, parts)
    parts.append("</hierarchy>")
    return "".join(parts)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _write(view: View, index: int, package: str, parts: list[str]) -> None:
    left, top, right, bottom = view.bounds
    attrs = (("index", str(index)), ("text", view.text), ("resource-id", view.rid),
             ("class", view.cls), ("package", package), ("content-desc", view.desc),
             ("checkable", _flag(view.checkable)), ("checked", _flag(view.checked)),
             ("clickable", _flag(view.clickable)), ("enabled", _flag(view.enabled)),
             ("focusable", _flag(view.focusable)), ("focused", _flag(view.focused)),
             ("scrollable", _flag(view.scrollable)), ("long-clickable", _flag(view.long_clickable)),
             ("password", "false"), ("selected", _flag(view.selected)),
             ("bounds", f"[{left},{top}][{right},{bottom}]"))
    opening = "<node " + " ".join(f'{k}="{escape(v, _ENTITIES)}"' for k, v in attrs)
    if not view.children:
        parts.append(opening + " />")
        return
    parts.append(opening + ">")
    for k, child in enumerate(view.children):
        _write(child, k, package, parts)
    parts.append("</node>")
