"""Image sizes from file headers, and what an image costs in input tokens.

Anthropic's current vision rule cuts an image into 28×28-pixel patches and charges one token
per patch: ``ceil(w / 28) * ceil(h / 28)``. An image whose padded long edge exceeds the tier's
edge limit, or that would cost more than the tier's token limit, is first scaled down, keeping
its aspect ratio, to the largest size within both bounds (short edge rounded with Python's
``round``). The standard tier allows 1568 px and 1568 tokens; the high-resolution tier
(Claude 4.7 and later) 2576 px and 4784 tokens. Documented examples: 200×200 → 64 tokens;
1000×1000 → 1296; 1920×1080 → 1456×819 → 1560 (high-res: 2691); 1075×1520 → 924×1307 → 1551.

Sizes are read from the first bytes of PNG, JPEG, GIF and WebP data; EXIF orientation is
ignored. Only a prefix of the base64 text is decoded (a 5 MB image costs 768 bytes of
decoding), so the reader must work from a header alone: the imagesize library was tried and
reads no size from header-only data, so this small parser stays. An image whose size cannot
be read (other formats, URL or file sources, corrupt data) costs
:data:`UNREADABLE_IMAGE_TOKENS`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import struct

PATCH_PX = 28
MAX_EDGE_PX = 1568
MAX_IMAGE_TOKENS = 1568
HIGH_RES_MAX_EDGE_PX = 2576
HIGH_RES_MAX_IMAGE_TOKENS = 4784
# Models of the high-resolution vision tier (shared/reference/anthropic-api.md §4.2).
_HIGH_RES_MODEL_MARKERS = ("opus-4-7", "opus-4-8", "sonnet-5", "opus-5", "fable-5", "mythos")
UNREADABLE_IMAGE_TOKENS = 1000
# Enough base64 for every header but JPEG's, whose size may follow a large EXIF block.
_HEADER_B64_CHARS = 1024

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height in pixels from an image's first bytes, or ``None`` if unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return _positive(width, height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return _positive(width, height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return _positive(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return (width, height)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            i += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return _positive(width, height)
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return None


def base64_image_size(data_b64: str) -> tuple[int, int] | None:
    """:func:`image_size` of base64 data, decoding only a prefix unless JPEG needs more."""
    prefix_len = min(len(data_b64), _HEADER_B64_CHARS) // 4 * 4
    try:
        head = base64.b64decode(data_b64[:prefix_len])
        size = image_size(head)
        if size is None and head[:2] == b"\xff\xd8" and prefix_len < len(data_b64):
            size = image_size(base64.b64decode(data_b64))
    except (binascii.Error, ValueError):
        return None
    return size


def _patches(px: int) -> int:
    return -(-px // PATCH_PX)


@functools.lru_cache(maxsize=1024)
def is_high_res_model(model: str) -> bool:
    """Whether ``model`` belongs to the high-resolution vision tier (cached: every line of a
    submit asks, of a few models)."""
    return any(marker in model for marker in _HIGH_RES_MODEL_MARKERS)


def _fits(long_px: int, short_px: int, max_edge_px: int, max_tokens: int) -> bool:
    long_patches, short_patches = _patches(long_px), _patches(short_px)
    return (
        long_patches * PATCH_PX <= max_edge_px
        and short_patches * PATCH_PX <= max_edge_px
        and long_patches * short_patches <= max_tokens
    )


def image_tokens(width: int, height: int, *, high_res: bool = False) -> int:
    """Input tokens of a ``width`` × ``height`` image after Anthropic's downscaling."""
    max_edge_px = HIGH_RES_MAX_EDGE_PX if high_res else MAX_EDGE_PX
    max_tokens = HIGH_RES_MAX_IMAGE_TOKENS if high_res else MAX_IMAGE_TOKENS
    long_px, short_px = max(width, height), min(width, height)

    def short_at(candidate_long: int) -> int:
        return max(1, round(short_px * candidate_long / long_px))

    if not _fits(long_px, short_px, max_edge_px, max_tokens):
        # Both the padded edges and the patch count grow with the long edge, so the sizes
        # that fit form a prefix of 1..long_px: binary-search its end.
        low, high = 1, long_px
        while low < high:
            middle = (low + high + 1) // 2
            if _fits(middle, short_at(middle), max_edge_px, max_tokens):
                low = middle
            else:
                high = middle - 1
        long_px, short_px = low, short_at(low)
    return _patches(long_px) * _patches(short_px)


def base64_image_tokens(data_b64: str, *, high_res: bool = False) -> int:
    """Input tokens of a base64 image, or :data:`UNREADABLE_IMAGE_TOKENS`."""
    size = base64_image_size(data_b64)
    if size is None:
        return UNREADABLE_IMAGE_TOKENS
    return image_tokens(*size, high_res=high_res)
