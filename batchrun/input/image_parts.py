"""Images in a template's messages: a table cell (or a rendered template) holding a path or
a URL becomes an image content block.

`image_block` turns the value into the block a request carries:

- ``http://`` or ``https://``: ``{"type": "image", "source": {"type": "url", "url": ...}}``;
  the API fetches it, nothing is read here;
- anything else is a local path, relative to ``base_dir`` (the table file's directory; the
  working directory for standard input): the file is read (at most
  :data:`MAX_IMAGE_FILE_BYTES`, so its base64 fits the API's per-image limit), its type found
  from its first bytes (JPEG, PNG, GIF or WebP, as the request checks do: the extension is
  not trusted), and sent as ``{"type": "base64", "media_type": ..., "data": ...}``.

Paths are read with the rights of whoever submits: any file they can read may be sent to
the model, which is what a local table asks for (no server route takes templates). A value
that cannot be used (empty, another URL scheme, no such file, not a regular file,
unreadable, too large, not a supported image) is a problem sentence naming ``what``
(``column 'photo'``), the value and the fix; the caller prefixes ``FILE:row N:``. Nothing
is cached: each row reads its own file when it is rendered, and its request is stored with
the next chunk of requests (at most about 16 MiB, `batchrun.store.batch_rows`) or, for an
estimate, dropped once counted.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from typing import Any, Final

from batchrun.input.content import IMAGE_MEDIA_TYPES, MAX_IMAGE_BASE64_BYTES, sniff_image_type
from batchrun.input.wording import mib_text, size_text

# The largest image file read: its base64 (4 characters per 3 bytes) is at most the API's
# per-image limit.
MAX_IMAGE_FILE_BYTES: Final = MAX_IMAGE_BASE64_BYTES // 4 * 3
_URL_PREFIXES: Final = ("http://", "https://")
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# How much of a path or URL a message shows.
_SHOWN_PATH_CHARS = 200


def image_block(value: object, *, base_dir: str, what: str) -> dict[str, Any] | str:
    """The image block for ``value`` (a URL or a path, see the module docstring), or the
    problem with it as a sentence that starts with ``what``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{what} is empty; give an image file's path or an http(s) URL"
    if not isinstance(value, str):
        return (
            f"{what} holds {type(value).__name__} {_shown(value)}, not text; give an image "
            "file's path or an http(s) URL"
        )
    text = value.strip()
    if text.lower().startswith(_URL_PREFIXES):
        return {"type": "image", "source": {"type": "url", "url": text}}
    if _SCHEME.match(text) or text.lower().startswith("data:"):
        return (
            f"{what} is {_shown(text)}, not a path or an http(s) URL; an image from a column is "
            "read from a file or fetched by the API from http:// or https://"
        )
    return _file_block(text, base_dir=base_dir, what=what)


def _file_block(text: str, *, base_dir: str, what: str) -> dict[str, Any] | str:
    expanded = os.path.expanduser(text)
    path = os.path.join(base_dir, expanded)
    shown = _shown(text) + ("" if os.path.isabs(expanded) else f" (in {_shown(base_dir)})")
    try:
        # Only a regular file is read: a FIFO or a device named in a cell would block or
        # never end.
        if not stat.S_ISREG(os.stat(path).st_mode):
            if os.path.isdir(path):
                return f"{what}: {shown} is a folder, not an image file"
            return f"{what}: {shown} is not a regular file; name an image file"
        with open(path, "rb") as file:
            data = file.read(MAX_IMAGE_FILE_BYTES + 1)
    except FileNotFoundError:
        return (
            f"{what}: no image file {shown}; check the path (a relative path starts at the "
            "table's folder)"
        )
    except PermissionError:
        return f"{what}: image file {shown} cannot be read (permission denied); make it readable"
    except ValueError:  # a NUL in the path
        return f"{what}: {shown} is not a file path (it holds a NUL character)"
    except OSError as exc:
        return f"{what}: image file {shown} cannot be read ({exc.strerror or exc})"
    if len(data) > MAX_IMAGE_FILE_BYTES:
        return (
            f"{what}: image file {shown} is over {size_text(MAX_IMAGE_FILE_BYTES)}, the most "
            f"whose base64 fits the API's {mib_text(MAX_IMAGE_BASE64_BYTES)} per-image "
            "limit; downscale or recompress it"
        )
    if not data:
        return f"{what}: image file {shown} is empty"
    media_type = sniff_image_type(data[:16])
    if media_type is None:
        return (
            f"{what}: {shown} is not a JPEG, PNG, GIF or WebP image (by its first bytes); "
            f"convert it to one of {', '.join(IMAGE_MEDIA_TYPES)}"
        )
    return {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": media_type,
            "data": base64.b64encode(data).decode("ascii"),
        },
    }


def _shown(value: object) -> str:
    """A cell quoted for a message: paths are often longer than other values, so more of
    them is kept."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOWN_PATH_CHARS:
        text = text[:_SHOWN_PATH_CHARS] + "…"
    return repr(text)
