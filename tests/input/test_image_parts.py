"""Images from a column in a template's messages: a URL passed on as a URL source; a local
file (relative to the table's folder) read, its type found from its bytes, base64-encoded
within the API's per-image limit; and every way a cell can be wrong, worded with the column
and the fix (real files in a temporary folder)."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import ConfigError
from batchrun.input.estimate import estimate_input_tokens
from batchrun.input.image_parts import MAX_IMAGE_FILE_BYTES, image_block
from batchrun.input.templates import Rendered, compile_template, render
from batchrun.input.validation import validate_line


def png(width: int, height: int) -> bytes:
    """A real (tiny, one-colour) PNG of this size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = (
    b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00"
    b"\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
)

PHOTO_TEMPLATE: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 10,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe {{ name }}."},
                {"type": "image", "column": "photo"},
            ],
        }
    ],
}


def rendered(row: dict[str, Any], base_dir: Path, data: dict[str, Any] = PHOTO_TEMPLATE) -> Any:
    return render(
        compile_template(data, source="t.toml"), row, 3, mode=None, base_dir=str(base_dir)
    )


@pytest.mark.parametrize(
    ("name", "data", "media_type"),
    [
        ("a.png", png(200, 200), "image/png"),
        ("b.jpg", JPEG, "image/jpeg"),
        ("c.gif", GIF, "image/gif"),
        ("d.webp", WEBP, "image/webp"),
        ("misnamed.png", JPEG, "image/jpeg"),  # the bytes decide, not the extension
    ],
)
def test_a_local_file_is_read_typed_by_its_bytes_and_sent_as_base64(
    tmp_path: Path, name: str, data: bytes, media_type: str
) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / name).write_bytes(data)

    result = rendered({"name": "x", "photo": f"img/{name}"}, tmp_path)

    assert isinstance(result, Rendered)
    assert result.params["messages"][0]["content"] == [
        {"type": "text", "text": "Describe x."},
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": media_type,
                "data": base64.b64encode(data).decode(),
            },
        },
    ]


def test_a_rendered_request_with_an_image_passes_the_request_checks_and_costs_its_patches(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.png").write_bytes(png(200, 200))
    result = rendered({"name": "x", "photo": str(tmp_path / "a.png")}, Path("/nonexistent"))

    assert isinstance(result, Rendered)
    import orjson

    checked = validate_line(orjson.dumps({"custom_id": "a", "params": result.params}), 1)
    assert not hasattr(checked, "problems"), checked
    # 200x200 is 8x8 patches of 28 px: 64 tokens, on top of the text.
    text_only = estimate_input_tokens(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe x."}]}]}
    )
    assert estimate_input_tokens(result.params) == text_only + 64


@pytest.mark.parametrize(
    "url", ["https://example.com/cat.png?size=large", "http://example.com/a b.jpg", " HTTPS://x/y "]
)
def test_a_url_becomes_a_url_source_and_nothing_is_read(tmp_path: Path, url: str) -> None:
    result = rendered({"name": "x", "photo": url}, tmp_path)

    assert isinstance(result, Rendered)
    assert result.params["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "url", "url": url.strip()},
    }


def test_a_source_template_renders_the_path_and_paths_start_at_the_tables_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "skus").mkdir()
    (tmp_path / "skus" / "A-7.gif").write_bytes(GIF)
    monkeypatch.chdir("/")
    template = {
        **PHOTO_TEMPLATE,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": "skus/{{ sku }}.gif"}],
            }
        ],
    }

    result = rendered({"sku": "A-7"}, tmp_path, template)

    assert isinstance(result, Rendered)
    assert result.params["messages"][0]["content"][0]["source"]["media_type"] == "image/gif"


def test_every_unusable_cell_is_a_row_problem_naming_the_column_and_the_fix(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    huge = tmp_path / "huge.png"
    with huge.open("wb") as out:
        out.write(png(1, 1))
        out.truncate(MAX_IMAGE_FILE_BYTES + 1)
    cases = {
        "nope.png": "column 'photo': no image file 'nope.png' (in ",
        "notes.png": "column 'photo': 'notes.png' (in ",
        "empty.png": "column 'photo': image file 'empty.png' (in ",
        "folder": "column 'photo': 'folder' (in ",
        "huge.png": "column 'photo': image file 'huge.png' (in ",
        "ftp://host/a.png": "column 'photo' is 'ftp://host/a.png', not a path or an http(s) URL",
        "data:image/png;base64,AAAA": "column 'photo' is 'data:image/png;base64,AAAA', not a",
        "": "column 'photo' is empty; give an image file's path or an http(s) URL",
        "a\x00b.png": "column 'photo': 'a\\x00b.png' (in ",
        "/dev/null": "column 'photo': '/dev/null' is not a regular file; name an image file",
        "x" * 5000: "column 'photo': image file '" + "x" * 200 + "…' (in ",
    }
    endings = {
        "notes.png": "is not a JPEG, PNG, GIF or WebP image (by its first bytes); convert it to "
        "one of image/jpeg, image/png, image/gif, image/webp",
        "empty.png": "is empty",
        "folder": "is a folder, not an image file",
        "huge.png": "per-image limit; downscale or recompress it",
        "nope.png": "check the path (a relative path starts at the table's folder)",
        "a\x00b.png": "is not a file path (it holds a NUL character)",
        "x" * 5000: "cannot be read (File name too long)",
    }
    for cell, start in cases.items():
        problems = rendered({"name": "x", "photo": cell}, tmp_path)
        assert isinstance(problems, tuple), cell
        assert len(problems) == 1, problems
        assert problems[0].startswith(start), problems
        if cell in endings:
            assert problems[0].endswith(endings[cell]), problems

    assert rendered({"name": "x", "photo": None}, tmp_path) == (
        "column 'photo' is empty; give an image file's path or an http(s) URL",
    )
    assert rendered({"name": "x", "photo": 7}, tmp_path) == (
        "column 'photo' holds int '7', not text; give an image file's path or an http(s) URL",
    )
    assert rendered({"name": "x"}, tmp_path) == (
        "the messages[0].content[1] image uses column 'photo', which is not a column of this "
        "row; its columns are 'name'",
    )


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    locked = tmp_path / "locked.png"
    locked.write_bytes(png(2, 2))
    locked.chmod(0)
    problem = image_block("locked.png", base_dir=str(tmp_path), what="column 'photo'")
    assert isinstance(problem, str)
    assert "cannot be read (permission denied)" in problem


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "messages[0].content is an empty list"),
        ([{"type": "audio"}], 'messages[0].content[0] must be {type = "text"'),
        ([{"type": "image"}], "messages[0].content[0] must have type and either column"),
        (
            [{"type": "image", "column": "a", "source": "b"}],
            "messages[0].content[0] must have type and either column",
        ),
        ([{"type": "image", "column": 3}], "messages[0].content[0].column must be a column"),
        ([{"type": "text", "text": "x", "extra": 1}], "must have type and text only"),
        ([{"type": "image", "source": "{{ x"}], "messages[0].content[0].source: template syntax"),
    ],
)
def test_a_part_that_cannot_work_is_refused_when_the_template_is_read(
    content: list[Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"^t\.toml: ") as raised:
        compile_template(
            {**PHOTO_TEMPLATE, "messages": [{"role": "user", "content": content}]},
            source="t.toml",
        )
    assert message in str(raised.value)
