"""SVG markup for the report's charts: colours, escaping, elements, paths. Text goes out
escaped; characters XML cannot hold at all (control characters, lone surrogates) become
U+FFFD, so that every chart is valid XML.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

from batchrun.ops.views.report.axes import coord

SVG_NS = "http://www.w3.org/2000/svg"
# Okabe & Ito's colour-blind-safe palette, most distinct first; series take them in turn.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
THRESHOLD_COLOUR = "#555555"
THRESHOLD_DASHES = "6 4"
BINDING_COLOUR = "#C00000"
MARK_COLOUR = "#222222"
MARK_DASHES = "3 3"
TEXT_COLOUR = "#333333"
GRID_COLOUR = "#E4E4E4"
AXIS_COLOUR = "#888888"
FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
FONT_SIZE_PX = 11
# Text is measured by estimate: an average character of the 11 px sans-serif font.
CHAR_WIDTH_PX = 6.2

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTRIBUTE_WHITESPACE = str.maketrans({"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def colour(index: int) -> str:
    """The palette's colour for the series at ``index``."""
    return PALETTE[index % len(PALETTE)]


def text_width(text: str) -> float:
    """The estimated width of ``text`` in pixels."""
    return len(text) * CHAR_WIDTH_PX


def shorten(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters, the last an ellipsis, if it is longer."""
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def escape_text(text: str) -> str:
    """``text`` as XML character data."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=False)


def escape_attribute(text: str) -> str:
    """``text`` as a double-quoted XML attribute value; line breaks and tabs survive."""
    return html.escape(_NOT_XML.sub("\ufffd", text)).translate(_ATTRIBUTE_WHITESPACE)


def element(tag: str, content: str = "", /, **attributes: str | float | None) -> str:
    """One element. Attribute names are the keywords with ``_`` as ``-`` (a trailing ``_``
    dropped: ``class_``); ``None`` leaves one out; numbers are rounded to 0.1. ``content``
    is markup, already escaped."""
    parts = [tag]
    for key, value in attributes.items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        written = escape_attribute(value) if isinstance(value, str) else coord(value)
        parts.append(f'{name}="{written}"')
    opening = " ".join(parts)
    return f"<{opening}>{content}</{tag}>" if content else f"<{opening}/>"


def title(text: str) -> str:
    """A ``<title>`` child: the accessible name of its parent, and its tooltip."""
    return f"<title>{escape_text(text)}</title>"


def text(
    x: float, y: float, content: str, *, anchor: str = "start", **attributes: str | float | None
) -> str:
    """A ``<text>`` of plain ``content`` at (x, y)."""
    return element(
        "text", escape_text(content), x=x, y=y, text_anchor=anchor, fill=TEXT_COLOUR, **attributes
    )


def halo() -> dict[str, str | float | None]:
    """Attributes that outline a text in white, to keep it readable over lines."""
    return {
        "stroke": "#FFFFFF",
        "stroke_width": 3,
        "stroke_linejoin": "round",
        "paint_order": "stroke",
    }


def rounded(values: Iterable[float]) -> list[str]:
    """Pixel coordinates as path text, rounded to 0.1 px."""
    return [f"{value:.1f}" for value in values]


def bare(d: str) -> str:
    """Path data with ".0" dropped from whole numbers (its numbers have one decimal each)."""
    d += "E"
    for separator in ",LHVZE":
        d = d.replace(f".0{separator}", separator)
    return d[:-1]


def through(xs: Sequence[str], ys: Sequence[str]) -> str:
    """Straight lines through the points (xs[i], ys[i]), the first a move if it opens a path:
    ``x,yLx,yL…``."""
    return "L".join([f"{x},{y}" for x, y in zip(xs, ys, strict=True)])


def steps(xs: Sequence[str], ys: Sequence[str], *, backward: bool = False) -> str:
    """Commands that continue a path from (xs[0], ys[0]) as a step line through the other
    points: across to each x, then up or down to its y (each y held until the next x); or,
    ``backward``, up or down first (the same line walked from its end). Moves that change
    nothing are left out."""
    parts, x_at, y_at, across = [], xs[0], ys[0], ""
    for x, y in zip(xs[1:], ys[1:], strict=True):
        if not backward:
            across = x
        if y != y_at:
            if across and across != x_at:
                parts.append("H" + across)
                x_at = across
            parts.append("V" + y)
            y_at = y
        if backward:
            across = x
    if across and across != x_at:
        parts.append("H" + across)
    return "".join(parts)


def dot_path(x: float, y: float, radius: float = 3.0) -> str:
    """The ``d`` of a filled circle: how a series of a single point is drawn."""
    r, d = coord(radius), coord(2 * radius)
    return f"M{coord(x - radius)},{coord(y)}a{r},{r} 0 1,0 {d},0a{r},{r} 0 1,0 -{d},0Z"
