"""Helpers on uiautomator dump XML, for simulated and real (adb) devices alike.

``parse_hierarchy`` flattens a dump into pre-order :class:`Node` s (``depth`` keeps the tree),
``element_at`` answers "what would a tap here hit", ``find`` looks an element up by its visible
label, and ``compact_text`` renders the screen as a few short lines a small model can read in its
prompt (one line per meaningful node, centre coordinates in device pixels).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterator, Optional, Union

Bounds = tuple[int, int, int, int]
_BOUNDS = re.compile(r"^\[(-?\d+),(-?\d+)\]\[(-?\d+),(-?\d+)\]$")
_END = "</hierarchy>"
MAX_LABEL = 40                                  # characters of a label kept in compact_text

# Short kinds for compact_text, matched on the class name's last dotted segment (first hit wins).
_KINDS = (("EditText", "edit"), ("AutoCompleteTextView", "edit"), ("Switch", "switch"),
          ("ToggleButton", "switch"), ("CheckBox", "check"), ("CheckedTextView", "check"),
          ("RadioButton", "radio"), ("ImageButton", "button"), ("Button", "button"),
          ("ImageView", "icon"), ("RecyclerView", "list"), ("ListView", "list"),
          ("ScrollView", "list"), ("GridView", "list"), ("ViewPager", "list"))


@dataclass(frozen=True)
class Node:
    """One ``<node>`` of a dump; ``index`` is uiautomator's sibling index, ``depth`` 0 is the root."""
    index: int
    text: str
    resource_id: str
    cls: str
    package: str
    content_desc: str
    checkable: bool
    checked: bool
    clickable: bool
    long_clickable: bool
    focusable: bool
    focused: bool
    scrollable: bool
    enabled: bool
    selected: bool
    bounds: Bounds
    depth: int

    @property
    def center(self) -> tuple[int, int]:
        left, top, right, bottom = self.bounds
        return (left + right) // 2, (top + bottom) // 2

    @property
    def area(self) -> int:
        left, top, right, bottom = self.bounds
        return max(0, right - left) * max(0, bottom - top)

    @property
    def label(self) -> str:
        """What a person would call this element: its text, else its content description."""
        return self.text.strip() or self.content_desc.strip()

    @property
    def editable(self) -> bool:
        return _short_kind(self.cls) == "edit"

    def contains(self, x: int, y: int) -> bool:
        left, top, right, bottom = self.bounds
        return left <= x <= right and top <= y <= bottom


def parse_hierarchy(xml: Union[str, bytes]) -> list[Node]:
    """All ``<node>`` elements in document (pre-)order. Text after ``</hierarchy>`` (adb's
    "UI hierchary dumped to ..." line) is ignored; anything else malformed raises ValueError."""
    text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else xml
    if not text or not text.strip():
        raise ValueError("empty hierarchy XML")
    end = text.rfind(_END)
    if end >= 0:
        text = text[:end + len(_END)]
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"hierarchy XML is not well-formed: {e}") from None
    if root.tag != "hierarchy":
        raise ValueError(f"hierarchy XML root is <{root.tag}>, expected <hierarchy>")
    nodes: list[Node] = []
    for element, depth in _preorder(root):
        nodes.append(_node(element, depth, len(nodes)))
    return nodes


def _preorder(root: ET.Element) -> Iterator[tuple[ET.Element, int]]:
    """Iterative walk so that very deep real-world dumps cannot hit the recursion limit."""
    stack = [(child, 0) for child in reversed(root) if child.tag == "node"]
    while stack:
        element, depth = stack.pop()
        yield element, depth
        stack.extend((child, depth + 1) for child in reversed(element) if child.tag == "node")


def _node(el: ET.Element, depth: int, position: int) -> Node:
    a = el.attrib
    cls = a.get("class", "")
    match = _BOUNDS.match(a.get("bounds", "").strip())
    if not match:
        raise ValueError(f"node {position} ({cls or 'no class'}) has bad bounds {a.get('bounds')!r}")
    try:
        index = int(a.get("index", "0"))
    except ValueError:
        raise ValueError(f"node {position} ({cls}) has a non-integer index {a.get('index')!r}") from None
    flag = {k: a.get(k, "false") == "true" for k in (
        "checkable", "checked", "clickable", "long-clickable", "focusable", "focused", "scrollable",
        "selected")}
    left, top, right, bottom = (int(v) for v in match.groups())
    return Node(index=index, text=a.get("text", ""), resource_id=a.get("resource-id", ""), cls=cls,
                package=a.get("package", ""), content_desc=a.get("content-desc", ""),
                checkable=flag["checkable"], checked=flag["checked"], clickable=flag["clickable"],
                long_clickable=flag["long-clickable"], focusable=flag["focusable"],
                focused=flag["focused"], scrollable=flag["scrollable"],
                enabled=a.get("enabled", "true") == "true", selected=flag["selected"],
                bounds=(left, top, right, bottom), depth=depth)


def element_at(nodes: list[Node], x: int, y: int) -> Optional[Node]:
    """The smallest clickable / long-clickable / focusable node containing (x, y), bounds
    inclusive; on a tie the later one in document order (drawn on top) wins."""
    hits = [n for n in reversed(nodes)
            if (n.clickable or n.long_clickable or n.focusable) and n.contains(x, y)]
    return min(hits, key=lambda n: n.area, default=None)


def find(nodes: list[Node], text: str) -> Optional[Node]:
    """The node whose text or content-desc equals ``text`` (case-insensitive, trimmed); a
    clickable match beats a plain one, otherwise the first in document order."""
    want = text.strip().casefold()
    if not want:
        return None
    matches = [n for n in nodes
               if want in (n.text.strip().casefold(), n.content_desc.strip().casefold())]
    return next((n for n in matches if n.clickable), matches[0] if matches else None)


def compact_text(nodes: list[Node], indices: bool = True) -> str:
    """One line per visible meaningful node: ``[i] kind "label" flags @(cx,cy)``.

    ``i`` is the node's position in ``nodes`` (left out with ``indices=False``: an agent that
    answers with coordinates does not need it, and a CPU model pays for every token). A clickable container without a label of its own is
    labelled with (up to two of) its descendants' texts, which are then not listed again, so a
    contact row reads ``[6] item "Aaron Blake | 555-0101" @(270,199)`` instead of three lines.
    """
    if not nodes:
        return ""
    screen = nodes[0].bounds
    covered: set[int] = set()
    lines = []
    for i, node in enumerate(nodes):
        if i in covered or not _visible(node, screen):
            continue
        label, texts = _display_label(nodes, i)
        covered.update(texts)
        if label or _interactive(node) or node.scrollable:
            lines.append(_line(i if indices else None, node, label))
    return "\n".join(lines)


def _display_label(nodes: list[Node], i: int) -> tuple[str, list[int]]:
    """A node's own label, or for an unlabelled interactive container up to two of its
    descendants' texts joined by " | " (and which descendants those were)."""
    node = nodes[i]
    if node.label or not _interactive(node):
        return node.label, []
    texts = [j for j in _descendants(nodes, i) if nodes[j].label and not _interactive(nodes[j])]
    return " | ".join(nodes[j].label for j in texts[:2]), texts


def label_at(nodes: list[Node], x: int, y: int) -> Optional[str]:
    """What a tap at (x, y) hits, as ``compact_text`` names it (None: nothing interactive there)."""
    node = element_at(nodes, x, y)
    if node is None:
        return None
    return _display_label(nodes, nodes.index(node))[0] or None


def _descendants(nodes: list[Node], i: int) -> Iterator[int]:
    j = i + 1
    while j < len(nodes) and nodes[j].depth > nodes[i].depth:
        yield j
        j += 1


def _visible(node: Node, screen: Bounds) -> bool:
    left, top, right, bottom = node.bounds
    return (node.area > 0 and left < screen[2] and right > screen[0]
            and top < screen[3] and bottom > screen[1])


def _interactive(node: Node) -> bool:
    return node.clickable or node.long_clickable or node.checkable or node.editable


def _short_kind(cls: str) -> str:
    name = cls.rsplit(".", 1)[-1]
    return next((kind for key, kind in _KINDS if key in name), "")


def _kind(node: Node) -> str:
    kind = _short_kind(node.cls)
    if kind:
        return kind
    if node.cls.endswith("TextView"):
        return "item" if node.clickable else "text"
    return "item" if node.clickable or node.long_clickable else "view"


def _line(i: Optional[int], node: Node, label: str) -> str:
    kind = _kind(node)
    parts = [kind if i is None else f"[{i}] {kind}"]
    if label:
        label = " ".join(label.split()).replace('"', "'")
        if len(label) > MAX_LABEL:
            label = label[:MAX_LABEL - 3] + "..."
        parts.append(f'"{label}"')
    if node.checkable:
        parts.append(("on" if node.checked else "off") if kind == "switch"
                     else ("checked" if node.checked else "unchecked"))
    for flag, word in ((node.focused, "focused"), (node.selected, "selected"),
                       (not node.enabled, "disabled"), (node.scrollable, "scrollable")):
        if flag:
            parts.append(word)
    cx, cy = node.center
    parts.append(f"@({cx},{cy})")
    return " ".join(parts)
