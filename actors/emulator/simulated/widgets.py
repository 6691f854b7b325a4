"""The simulated UI's building blocks: a view tree and the screen base class.

A :class:`View` carries both what uiautomator would report about it (Android class, text, flags,
bounds) and what the simulator needs (touch handlers, how to draw it). Screens rebuild their tree
from the phone's data on every look, so the tree can never drift from the state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

from actors.emulator.device import DeviceError

Box = tuple[int, int, int, int]
Handler = Callable[[], None]

STATUS_H, BAR_H = 48, 96             # status bar, app bar heights (px)
TOP = STATUS_H + BAR_H               # where an app's content starts
ROW_H = 110                          # one list row
PAD = 32                             # horizontal margin
FIELD_H = 96                         # one text field
SCROLL_MIN = 40                      # shorter vertical swipes do not scroll

FRAME, LINEAR = "android.widget.FrameLayout", "android.widget.LinearLayout"
RECYCLER = "android.support.v7.widget.RecyclerView"


@dataclass(eq=False)
class View:
    """One node of the simulated window. ``style`` tells the renderer how to draw it; ``hint``
    marks a text field showing its hint; ``scroll`` is (first, visible, total) for lists."""
    cls: str
    bounds: Box
    text: str = ""
    desc: str = ""
    rid: str = ""
    style: str = "group"
    glyph: str = ""
    hint: bool = False
    scroll: Optional[tuple[int, int, int]] = None
    clickable: bool = False
    long_clickable: bool = False
    focusable: bool = False
    focused: bool = False
    checkable: bool = False
    checked: bool = False
    scrollable: bool = False
    selected: bool = False
    enabled: bool = True
    on_tap: Optional[Handler] = None
    on_long: Optional[Handler] = None
    on_scroll: Optional[Callable[[int], None]] = None
    children: list["View"] = field(default_factory=list)

    def walk(self) -> Iterator["View"]:
        yield self
        for child in self.children:
            yield from child.walk()

    def contains(self, x: int, y: int) -> bool:
        left, top, right, bottom = self.bounds
        return left <= x < right and top <= y < bottom


def group(box: Box, children: list[View], rid: str = "", cls: str = LINEAR) -> View:
    return View(cls, box, rid=rid, children=children)


def label(box: Box, text: str, rid: str = "", style: str = "text") -> View:
    return View("android.widget.TextView", box, text=text, rid=rid, style=style)


def button(box: Box, text: str, on_tap: Handler, rid: str = "") -> View:
    return View("android.widget.Button", box, text=text, rid=rid, style="button", clickable=True,
                focusable=True, on_tap=on_tap)


def icon_button(box: Box, desc: str, glyph: str, on_tap: Handler, rid: str = "",
                style: str = "icon") -> View:
    return View("android.widget.ImageButton", box, desc=desc, rid=rid, style=style, glyph=glyph,
                clickable=True, focusable=True, on_tap=on_tap)


def switch(box: Box, text: str, on: bool, on_tap: Handler, rid: str = "") -> View:
    return View("android.widget.Switch", box, text=text, rid=rid, style="switch", checkable=True,
                checked=on, clickable=True, focusable=True, on_tap=on_tap)


def checkbox(box: Box, text: str, done: bool, on_tap: Handler, on_long: Handler,
             rid: str = "") -> View:
    return View("android.widget.CheckBox", box, text=text, rid=rid, style="checkbox",
                checkable=True, checked=done, clickable=True, long_clickable=True, focusable=True,
                on_tap=on_tap, on_long=on_long)


def radio(box: Box, text: str, on: bool, on_tap: Handler, rid: str = "") -> View:
    return View("android.widget.RadioButton", box, text=text, rid=rid, style="radio",
                checkable=True, checked=on, clickable=True, focusable=True, on_tap=on_tap)


def edit(box: Box, value: str, hint: str, focused: bool, on_tap: Handler, rid: str = "") -> View:
    """An EditText; like a real dump, an empty field reports its hint as its text."""
    return View("android.widget.EditText", box, text=value or hint, hint=not value, rid=rid,
                style="edit", clickable=True, long_clickable=True, focusable=True, focused=focused,
                on_tap=on_tap)


def nav_row(box: Box, title: str, summary: str, on_tap: Handler, rid: str = "") -> View:
    """A clickable list row with a title line and a grey summary line (settings entries, contacts)."""
    left, top, right, bottom = box
    return View(LINEAR, box, rid=rid, style="row", clickable=True, focusable=True, on_tap=on_tap,
                children=[label((left + PAD, top + 12, right - PAD, top + 62), title),
                          label((left + PAD, top + 62, right - PAD, bottom - 12), summary,
                                style="subtext")])


def handler_at(root: View, x: int, y: int) -> Optional[View]:
    """The topmost, deepest view at (x, y) with a touch handler: like Android, later children
    (drawn on top) get the touch first and a parent only gets what its children refuse."""
    if not root.contains(x, y):
        return None
    for child in reversed(root.children):
        hit = handler_at(child, x, y)
        if hit is not None:
            return hit
    return root if (root.on_tap or root.on_long) else None


def scrollable_at(root: View, x: int, y: int) -> Optional[View]:
    """The innermost list at (x, y) that can scroll now."""
    hits = [v for v in root.walk() if v.scrollable and v.on_scroll and v.contains(x, y)]
    return hits[-1] if hits else None


class Nav(Protocol):
    """What a screen may use of the device: its data, its size and the back stack."""
    data: dict
    size: tuple[int, int]

    def push(self, screen: "Screen") -> None: ...
    def pop(self) -> None: ...


@dataclass
class Dialog:
    """A modal dialog on top of a screen; taps outside it dismiss it, as on Android."""
    name: str
    title: str
    buttons: list[tuple[str, Handler]]


class Screen:
    """One screen of one app. Subclasses set the class attributes and build ``content``; the base
    adds the app bar (title, navigate-up, action icons), dialogs, text-field focus and list scroll."""
    app = ""                # app key: settings, contacts, todo, clock, launcher
    name = ""               # screen id prefix, e.g. "contacts/list"
    title: Optional[str] = ""
    root_of_app = False     # the app's first screen has no navigate-up button

    def __init__(self, nav: Nav):
        self.nav = nav
        self.dialog: Optional[Dialog] = None
        self.fields: dict[str, str] = {}
        self.focus: Optional[str] = None
        self.error = ""
        self.first = 0          # index of the first list row shown

    @property
    def package(self) -> str:
        return f"com.evoray.{self.app}"

    @property
    def screen_name(self) -> str:
        return f"{self.name}:{self.dialog.name}" if self.dialog else self.name

    def rid(self, name: str) -> str:
        return f"{self.package}:id/{name}"

    def content(self, top: int) -> list[View]:
        raise NotImplementedError

    def actions(self) -> list[tuple[str, str, Handler]]:
        """App bar action icons as (content-desc, glyph, handler), right to left."""
        return []

    def build(self) -> View:
        width, height = self.nav.size
        kids = [] if self.title is None else [self._app_bar(width)]
        top = STATUS_H if self.title is None else TOP
        kids.append(group((0, top, width, height), self.content(top), self.rid("content"), FRAME))
        if self.dialog:
            kids.append(self._dialog_view(width, height))
        return View(FRAME, (0, 0, width, height), style="root", children=kids)

    def _app_bar(self, width: int) -> View:
        bar = View("android.view.ViewGroup", (0, STATUS_H, width, TOP), rid=self.rid("toolbar"),
                   style="appbar")
        left = PAD
        if not self.root_of_app:
            bar.children.append(icon_button((8, STATUS_H + 8, 88, TOP - 8), "Navigate up", "<",
                                            self.nav.pop, style="bar_icon"))
            left = 104
        right = width - 8
        icons = []
        for desc, glyph, handler in self.actions():
            icons.append(icon_button((right - 80, STATUS_H + 8, right, TOP - 8), desc, glyph, handler,
                                     self.rid(desc.lower().replace(" ", "_")), style="bar_icon"))
            right -= 88
        bar.children.append(label((left, STATUS_H, right, TOP), self.title or "", style="title"))
        bar.children.extend(icons)
        return bar

    def _dialog_view(self, width: int, height: int) -> View:
        dialog = self.dialog
        assert dialog is not None
        top, bottom = height // 2 - 150, height // 2 + 150
        panel = View(FRAME, (PAD, top, width - PAD, bottom), rid="android:id/content",
                     style="dialog", on_tap=lambda: None)
        panel.children.append(label((2 * PAD, top + 30, width - 2 * PAD, top + 110), dialog.title,
                                    "android:id/alertTitle", style="heading"))
        slot = (width - 2 * PAD) // max(1, len(dialog.buttons))
        for k, (text, handler) in enumerate(dialog.buttons):
            left = PAD + k * slot
            panel.children.append(button((left + 16, bottom - 120, left + slot - 16, bottom - 30),
                                         text, handler, f"android:id/button{k + 1}"))
        return View(FRAME, (0, 0, width, height), style="scrim", on_tap=self.dismiss,
                    children=[panel])

    def dismiss(self) -> None:
        self.dialog = None

    # --- text fields -------------------------------------------------------------------------
    def form(self, top: int, fields: list[tuple[str, str]], save) -> list[View]:
        """Fields 120 px apart, the error line (if any), then a Save button: every app's form."""
        width = self.nav.size[0]
        views = [v for i, (key, hint) in enumerate(fields) for v in self.field(key, hint, top + 30 + 120 * i)]
        bottom = top + 30 + 120 * len(fields)
        if self.error:
            views.append(label((PAD, bottom - 10, width - PAD, bottom + 40), self.error,
                               self.rid("error"), style="error"))
        views.append(button((PAD, bottom + 60, width - PAD, bottom + 60 + FIELD_H), "Save", save,
                            self.rid("save")))
        return views

    def field(self, key: str, hint: str, top: int) -> list[View]:
        """An EditText (tap to focus) plus, while it holds text, a "Clear <hint>" icon in it."""
        width = self.nav.size[0]
        box = (PAD, top, width - PAD, top + FIELD_H)
        value = self.fields.get(key, "")
        views = [edit(box, value, hint, self.focus == key, lambda: self._focus(key), self.rid(key))]
        if value:
            views.append(icon_button((box[2] - 80, top + 8, box[2] - 8, top + FIELD_H - 8),
                                     f"Clear {hint.lower()}", "x", lambda: self._clear(key),
                                     self.rid(f"clear_{key}")))
        return views

    def _focus(self, key: str) -> None:
        self.focus = key

    def _clear(self, key: str) -> None:
        self.fields[key] = ""
        self.focus = key

    def type_text(self, text: str) -> None:
        if self.focus is None:
            raise DeviceError("no_focus", "no text field is focused; tap a text field first")
        self.fields[self.focus] = self.fields.get(self.focus, "") + text
        self.error = ""

    # --- scrolling lists ---------------------------------------------------------------------
    def rows(self, items: list, box: Box, make_row: Callable[[int, object, Box], View]) -> View:
        """A RecyclerView showing whole rows from ``self.first``; it is scrollable only when the
        items do not all fit, and a vertical swipe moves it by whole rows."""
        left, top, right, bottom = box
        fits = max(1, (bottom - top) // ROW_H)
        self.first = max(0, min(self.first, len(items) - fits))
        shown = items[self.first:self.first + fits]
        rows = [make_row(self.first + k, item, (left, top + k * ROW_H, right, top + (k + 1) * ROW_H))
                for k, item in enumerate(shown)]
        can_scroll = len(items) > fits
        return View(RECYCLER, box, rid=self.rid("list"), style="list", scrollable=can_scroll,
                    focusable=can_scroll, scroll=(self.first, fits, len(items)),
                    on_scroll=lambda dy: self._scroll(dy, len(items), fits), children=rows)

    def _scroll(self, dy: int, total: int, fits: int) -> None:
        """``dy`` > 0: the finger moved up, so later rows come into view."""
        if abs(dy) < SCROLL_MIN:
            return
        step = max(1, int(abs(dy) / ROW_H + 0.5)) * (1 if dy > 0 else -1)
        self.first = max(0, min(self.first + step, total - fits))
