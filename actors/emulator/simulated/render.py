"""Screenshots of the simulated phone, drawn with Pillow from the same view tree as the dump.

Deterministic by construction: no clock (the status bar always says 12:00), no randomness, the
font bundled with Pillow, so the same state gives byte-identical PNGs. Dark theme and font size
from the settings change the picture the way they would on a phone.
"""
from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .widgets import PAD, STATUS_H, View

LIGHT = {"bg": (250, 250, 250), "fg": (33, 33, 33), "sub": (117, 117, 117), "bar": (63, 81, 181),
         "status": (48, 63, 159), "accent": (0, 137, 123), "line": (224, 224, 224),
         "panel": (255, 255, 255), "error": (211, 47, 47), "on_bar": (255, 255, 255)}
DARK = {"bg": (18, 18, 18), "fg": (230, 230, 230), "sub": (160, 160, 160), "bar": (40, 40, 48),
        "status": (0, 0, 0), "accent": (128, 203, 196), "line": (60, 60, 60),
        "panel": (44, 44, 44), "error": (239, 154, 154), "on_bar": (240, 240, 240)}
TEXT_SIZE = {"small": 22, "default": 26, "large": 30}
ICON_COLORS = ((233, 30, 99), (3, 169, 244), (255, 152, 0), (76, 175, 80), (156, 39, 176))


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_png(root: View, data: dict, size: tuple[int, int]) -> bytes:
    """The screen as PNG bytes: status bar, then every view of the tree in drawing order."""
    settings = data["settings"]
    painter = _Painter(size, DARK if settings["dark_theme"] else LIGHT,
                       TEXT_SIZE.get(settings["font_size"], TEXT_SIZE["default"]))
    for view in root.walk():
        painter.draw(view)
    painter.status_bar(settings)
    out = io.BytesIO()
    painter.image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class _Painter:
    def __init__(self, size: tuple[int, int], colors: dict, text_size: int):
        self.image = Image.new("RGB", size, colors["bg"])
        self.pen = ImageDraw.Draw(self.image, "RGBA")
        self.c = colors
        self.text_size = text_size

    def draw(self, view: View) -> None:
        method = getattr(self, f"_{view.style}", None)
        if method is not None:
            method(view)

    def text(self, xy: tuple[int, int], s: str, color, size: int = 0, anchor: str = "lm",
             width: int = 10_000) -> None:
        font = _font(size or self.text_size)
        while s and font.getlength(s) > width:
            s = s[:-4] + "..." if len(s) > 4 else ""
        self.pen.text(xy, s, fill=color, font=font, anchor=anchor)

    def status_bar(self, settings: dict) -> None:
        width = self.image.width
        self.pen.rectangle((0, 0, width, STATUS_H), fill=self.c["status"])
        self.text((PAD, STATUS_H // 2), "12:00", self.c["on_bar"], 22)
        icons = [name for key, name in (("airplane", "AIR"), ("wifi", "WiFi"), ("bluetooth", "BT"))
                 if settings[key]] + ["100%"]
        self.text((width - PAD, STATUS_H // 2), "  ".join(icons), self.c["on_bar"], 22, "rm")

    # --- one method per View.style -----------------------------------------------------------
    def _appbar(self, v: View) -> None:
        self.pen.rectangle(v.bounds, fill=self.c["bar"])

    def _title(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        self.text((left, (top + bottom) // 2), v.text, self.c["on_bar"], 32, width=right - left)

    def _text(self, v: View, color_key: str = "fg", size: int = 0) -> None:
        left, top, right, bottom = v.bounds
        self.text((left, (top + bottom) // 2), v.text, self.c[color_key], size, width=right - left)

    def _subtext(self, v: View) -> None:
        self._text(v, "sub", self.text_size - 4)

    def _heading(self, v: View) -> None:
        self._text(v, "accent", self.text_size + 4)

    def _error(self, v: View) -> None:
        self._text(v, "error")

    def _row(self, v: View) -> None:
        left, _, right, bottom = v.bounds
        self.pen.line((left + PAD, bottom - 1, right - PAD, bottom - 1), fill=self.c["line"])

    def _button(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        self.pen.rounded_rectangle(v.bounds, radius=12, fill=self.c["accent"])
        label_color = self.c["bg"] if self.c is DARK else (255, 255, 255)
        self.text(((left + right) // 2, (top + bottom) // 2), v.text, label_color, anchor="mm",
                  width=right - left - 16)

    def _icon(self, v: View, color_key: str = "sub") -> None:
        left, top, right, bottom = v.bounds
        self.text(((left + right) // 2, (top + bottom) // 2), v.glyph, self.c[color_key], 40, "mm")

    def _bar_icon(self, v: View) -> None:
        self._icon(v, "on_bar")

    def _switch(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        cy = (top + bottom) // 2
        self.text((left + PAD, cy), v.text, self.c["fg"], width=right - left - 3 * PAD - 70)
        track = (right - PAD - 70, cy - 16, right - PAD, cy + 16)
        self.pen.rounded_rectangle(track, radius=16, fill=self.c["accent"] if v.checked else self.c["line"])
        knob_x = track[2] - 16 if v.checked else track[0] + 16
        self.pen.ellipse((knob_x - 20, cy - 20, knob_x + 20, cy + 20), fill=self.c["panel"],
                         outline=self.c["sub"])
        self._row(v)

    def _checkbox(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        cy = (top + bottom) // 2
        box = (left + PAD, cy - 20, left + PAD + 40, cy + 20)
        if v.checked:
            self.pen.rectangle(box, fill=self.c["accent"])
            self.pen.line((box[0] + 8, cy, box[0] + 17, cy + 10, box[2] - 7, cy - 10),
                          fill=(255, 255, 255), width=5)
        else:
            self.pen.rectangle(box, outline=self.c["sub"], width=3)
        self.text((box[2] + 24, cy), v.text, self.c["sub" if v.checked else "fg"],
                  width=right - box[2] - 24 - PAD)
        self._row(v)

    def _radio(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        cy = (top + bottom) // 2
        cx = left + PAD + 20
        self.pen.ellipse((cx - 20, cy - 20, cx + 20, cy + 20), outline=self.c["accent"], width=3)
        if v.checked:
            self.pen.ellipse((cx - 10, cy - 10, cx + 10, cy + 10), fill=self.c["accent"])
        self.text((cx + 44, cy), v.text, self.c["fg"])

    def _edit(self, v: View) -> None:
        left, top, right, bottom = v.bounds
        focused = v.focused
        self.pen.rounded_rectangle(v.bounds, radius=8, outline=self.c["accent" if focused else "sub"],
                                   width=3 if focused else 1)
        cy = (top + bottom) // 2
        self.text((left + 20, cy), v.text, self.c["sub" if v.hint else "fg"], width=right - left - 110)
        if focused:
            x = left + 20 + (0 if v.hint else int(_font(self.text_size).getlength(v.text)) + 4)
            self.pen.line((x, cy - 18, x, cy + 18), fill=self.c["accent"], width=2)

    def _list(self, v: View) -> None:
        if not v.scrollable or v.scroll is None:
            return
        first, shown, total = v.scroll
        _, top, right, bottom = v.bounds
        span = bottom - top
        y0 = top + span * first // total
        self.pen.rectangle((right - 8, y0, right - 3, y0 + span * shown // total), fill=self.c["sub"])

    def _app_icon(self, v: View) -> None:
        left, top, right, _ = v.bounds
        cx = (left + right) // 2
        color = ICON_COLORS[sum(map(ord, v.text)) % len(ICON_COLORS)]
        self.pen.rounded_rectangle((cx - 44, top + 16, cx + 44, top + 104), radius=22, fill=color)
        self.text((cx, top + 60), v.text[:1], (255, 255, 255), 44, "mm")
        self.text((cx, top + 132), v.text, self.c["fg"], 22, "mm", width=right - left - 8)

    def _scrim(self, v: View) -> None:
        self.pen.rectangle(v.bounds, fill=(0, 0, 0, 120))

    def _dialog(self, v: View) -> None:
        self.pen.rounded_rectangle(v.bounds, radius=16, fill=self.c["panel"])
