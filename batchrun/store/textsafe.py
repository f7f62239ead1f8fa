"""Text every column and every UTF-8 output takes: the one place that makes it so.

JSON lets a server send what no database text column stores as it is: an escaped lone
surrogate (``"\\ud800"``, which Python decodes to a str that UTF-8 cannot encode) and a NUL
(``"\\u0000"``, which Postgres refuses in ``text``). Such a character may arrive in an
answer's text, its ``model`` or ``stop_reason``, an error message, or a provider batch's
result lines; one of them must end its request like any other answer, never the run.

- :func:`safe_text` is for plain text (error messages, models, reasons, an export's text
  cells): each lone surrogate and each NUL becomes U+FFFD, the replacement character, so
  the text stays one line of the same length.
- :func:`safe_json_text` is for JSON text (a stored Message, an error response, the raw
  body): each becomes its JSON escape (``\\ud800``, ``\\u0000``), plain ASCII, so the stored
  JSON still says exactly what the server sent and the Anthropic-format export gives it back.

The store applies them at its write boundary, through the column types of ``tables``
(``SafeString``, ``SafeText``, ``JsonText``), so no call site has to remember. Both return
the very string they were given when it is clean, which is nearly always, after a check that
costs about as much as copying the string once (see :func:`is_clean`).
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"
# A NUL, or any surrogate code point: a str holds one only when it came from an escape that
# did not pair (JSON decoders join a high and a low surrogate into one character).
_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def is_clean(text: str) -> bool:
    """Whether ``text`` holds neither a NUL nor a surrogate. ASCII text (the usual case: a
    Message as the API sends it) is told by a flag CPython keeps and one scan for NUL; other
    text by encoding it, which refuses a surrogate (measured: 2-5 times as fast as the
    regular expression's scan, about 1 µs a kilobyte)."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return False
    return "\x00" not in text


def safe_text(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD."""
    return text if is_clean(text) else _UNSAFE.sub(REPLACEMENT_CHARACTER, text)


def _escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def safe_json_text(text: str) -> str:
    """JSON text with each raw NUL and lone surrogate written as its ``\\uXXXX`` escape: the
    same JSON value (JSON encoders only leave them raw inside strings), storable and
    encodable. Text that is not JSON (a raw body that could not be read) gets the same
    escapes, six ASCII characters each."""
    return text if is_clean(text) else _UNSAFE.sub(_escape, text)


def safe_value(value: Any) -> Any:
    """A parsed JSON value with :func:`safe_text` applied to every string in it, keys too
    (for a ``tool_use`` input on its way into an export)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [safe_value(item) for item in value]
    if isinstance(value, dict):
        return {safe_text(str(key)): safe_value(item) for key, item in value.items()}
    return value
