"""Reading a request file: line numbering, file-level rules, caps, opening and formatting."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.errors import ConfigError, InputFileError
from batchrun.input.reader import (
    MAX_REQUESTS,
    FileProblem,
    ReadItem,
    format_problems,
    open_request_file,
    read_requests,
)
from batchrun.input.seen_ids import SeenIds
from batchrun.input.validation import MAX_LINE_BYTES, InvalidLine, ValidRequest, oversized_line


def request(custom_id: str, **params: Any) -> bytes:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    body.update(params)
    return json.dumps({"custom_id": custom_id, "params": body}).encode()


def read(data: bytes, **kwargs: Any) -> list[ReadItem]:
    return list(read_requests(io.BytesIO(data), source="requests.jsonl", **kwargs))


def summary(items: list[ReadItem]) -> list[tuple[int, str]]:
    """Each item as (line_no, custom_id or the kind of problem) for compact assertions."""
    out: list[tuple[int, str]] = []
    for line_no, item in items:
        if isinstance(item, ValidRequest):
            out.append((line_no, item.custom_id))
        elif isinstance(item, InvalidLine):
            assert item.line_no == line_no
            out.append((line_no, "invalid"))
        else:
            out.append((line_no, "file problem"))
    return out


def only_problems(items: list[ReadItem], line_no: int) -> tuple[str, ...]:
    for number, item in items:
        if number == line_no and isinstance(item, InvalidLine):
            return item.problems
    raise AssertionError(f"no invalid line {line_no} in {items}")


LAYOUT_CASES: list[tuple[str, bytes, list[tuple[int, str]]]] = [
    ("one line", request("a") + b"\n", [(1, "a")]),
    ("no final newline", request("a") + b"\n" + request("b"), [(1, "a"), (2, "b")]),
    ("utf-8 bom", b"\xef\xbb\xbf" + request("a") + b"\n", [(1, "a")]),
    (
        "blank lines keep physical numbering",
        b"\n" + request("a") + b"\n  \t\n\n" + request("b") + b"\n\n",
        [(2, "a"), (5, "b")],
    ),
    (
        "crlf endings",
        request("a") + b"\r\n\r\n" + request("b") + b"\r\n",
        [(1, "a"), (3, "b")],
    ),
    (
        "a bad line does not stop reading",
        request("a") + b"\n{oops\n" + request("b") + b"\n",
        [(1, "a"), (2, "invalid"), (3, "b")],
    ),
    (
        "invalid utf-8 spoils only its line",
        b'{"custom_id": "\xe9"}\n' + request("b") + b"\n",
        [(1, "invalid"), (2, "b")],
    ),
    ("empty file", b"", [(0, "file problem")]),
    ("blank lines only", b"\n \r\n\t\n", [(0, "file problem")]),
    ("bom only", b"\xef\xbb\xbf\n", [(0, "file problem")]),
    ("utf-16 file", "{}\n".encode("utf-16"), [(1, "file problem")]),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [case[1:] for case in LAYOUT_CASES],
    ids=[case[0] for case in LAYOUT_CASES],
)
def test_lines_are_numbered_physically_and_blank_lines_skipped(
    data: bytes, expected: list[tuple[int, str]]
) -> None:
    assert summary(read(data)) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "requests.jsonl contains no requests; write one JSON request per line"),
        ("{}\n".encode("utf-16"), "requests.jsonl is UTF-16 encoded; save it as UTF-8"),
    ],
)
def test_file_problems_name_the_file_and_the_fix(data: bytes, fragment: str) -> None:
    ((_, item),) = read(data)
    assert item == FileProblem(fragment)


def test_invalid_utf8_names_the_byte() -> None:
    items = read(b'{"custom_id": "\xe9"}\n')
    assert only_problems(items, 1) == (
        "line is not valid UTF-8 at byte 16; save the file as UTF-8",
    )


def test_a_duplicate_custom_id_names_both_lines_and_is_not_recorded_under_it() -> None:
    items = read(request("x") + b"\n\n" + request("x") + b"\n" + request("x") + b"\n")
    assert summary(items) == [(1, "x"), (3, "invalid"), (4, "invalid")]
    message = "custom_id 'x' is already used on line 1; custom_ids must be unique in a batch"
    assert only_problems(items, 3) == (message,)
    assert only_problems(items, 4) == (message,)
    assert all(item.custom_id is None for _, item in items[1:] if isinstance(item, InvalidLine))


def test_duplicates_far_apart_are_found_once_the_ids_moved_to_disk() -> None:
    # Three ids in memory, then they move to the temporary database: duplicates of ids on
    # either side, and of one seen twice, still name the first line.
    ids = ["a", "b", "c", "d", "e", "f", "g", "a", "f", "h", "a", "g"]
    data = b"".join(request(custom_id) + b"\n" for custom_id in ids)
    items = read(data, ids_in_memory=3)

    assert summary(items) == [
        *((n, custom_id) for n, custom_id in enumerate("abcdefg", start=1)),
        (8, "invalid"),
        (9, "invalid"),
        (10, "h"),
        (11, "invalid"),
        (12, "invalid"),
    ]
    for line, first in ((8, 1), (9, 6), (11, 1), (12, 7)):
        assert f"already used on line {first};" in only_problems(items, line)[0]


def test_seen_ids_hold_a_bounded_number_in_memory() -> None:
    seen = SeenIds(ids_in_memory=1000)
    try:
        for n in range(1, 10_001):
            assert seen.first_line(f"r{n}", n) == n
        assert seen.in_memory < 1000
        assert seen.first_line("r17", 20_000) == 17
        assert seen.first_line("r9999", 20_001) == 9999
    finally:
        seen.close()


def test_an_invalid_first_line_still_claims_its_custom_id() -> None:
    items = read(request("x", max_tokens=0) + b"\n" + request("x", max_tokens=-1) + b"\n")
    first = items[0][1]
    assert isinstance(first, InvalidLine)
    assert first.custom_id == "x"
    problems = only_problems(items, 2)
    assert "max_tokens is -1" in problems[0]
    assert "already used on line 1" in problems[1]


def test_lines_with_invalid_custom_ids_do_not_count_as_duplicates() -> None:
    items = read(request("a b") + b"\n" + request("a b") + b"\n")
    assert all("already used" not in p for p in only_problems(items, 2))


def test_the_default_model_fills_in_missing_models() -> None:
    params = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    line = json.dumps({"custom_id": "a", "params": params}).encode()
    ((_, item),) = read(line, default_model="claude-haiku-4-5")
    assert isinstance(item, ValidRequest)
    assert item.model == "claude-haiku-4-5"
    assert '"model":"claude-haiku-4-5"' in item.params_json


def test_an_empty_default_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        read(request("a"), default_model=" ")


# --- caps ------------------------------------------------------------------------------------


def test_too_many_requests_stops_reading_with_a_file_problem() -> None:
    data = b"\n".join(request(f"r{i}") for i in range(5)) + b"\n"
    items = read(b"\n" + data, max_requests=3)
    assert summary(items) == [(2, "r0"), (3, "r1"), (4, "r2"), (5, "file problem")]
    assert items[-1][1] == FileProblem(
        "requests.jsonl has more than 3 requests (stopped at line 5); "
        "split the file or pass --max-requests N"
    )


def test_the_default_request_cap_is_anthropics_batch_limit() -> None:
    items = read(b"{}\n" * (MAX_REQUESTS + 1))
    assert len(items) == MAX_REQUESTS + 1
    line_no, problem = items[-1]
    assert line_no == MAX_REQUESTS + 1
    assert problem == FileProblem(
        "requests.jsonl has more than 100,000 requests, Anthropic's batch limit "
        "(stopped at line 100,001); split the file or pass --max-requests N"
    )


def test_invalid_lines_count_as_requests_but_blank_lines_do_not() -> None:
    items = read(b"{}\n\n\n{}\n", max_requests=2)
    assert summary(items) == [(1, "invalid"), (4, "invalid")]


def test_a_file_over_the_byte_cap_stops_reading_with_a_file_problem() -> None:
    first = request("a") + b"\n"
    items = read(first + request("b") + b"\n", max_file_bytes=len(first) + 10)
    assert summary(items) == [(1, "a"), (2, "file problem")]
    problem = items[-1][1]
    assert isinstance(problem, FileProblem)
    assert problem.message.startswith(f"requests.jsonl is larger than {len(first) + 10} bytes")
    assert "split the file or pass --max-file-bytes N" in problem.message


def test_a_file_exactly_at_the_byte_cap_is_read() -> None:
    data = request("a") + b"\n" + request("b")
    assert summary(read(data, max_file_bytes=len(data))) == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("ending", "tail"),
    [(b"\n", b""), (b"\r\n", b""), (b"", b"")],
    ids=["lf", "crlf", "at end of file"],
)
def test_an_over_long_line_is_skipped_and_named_by_its_size(ending: bytes, tail: bytes) -> None:
    long_line = b'{"custom_id": "a", "x": "' + b"y" * 3_000_000 + b'"}'
    data = long_line + ending + (request("b") + b"\n" if ending else b"")
    items = read(data, max_line_bytes=1000)
    expected = [(1, "invalid"), (2, "b")] if ending else [(1, "invalid")]
    assert summary(items) == expected
    assert only_problems(items, 1) == (
        f"line is {len(long_line):,} bytes (2.9 MiB), over the limit of 1,000 bytes for one "
        "request; make the request smaller (fewer or smaller images and documents)",
    )


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""], ids=["lf", "crlf", "at end of file"])
def test_a_line_exactly_at_the_line_limit_is_read(ending: bytes) -> None:
    line = request("a")
    assert summary(read(line + ending, max_line_bytes=len(line))) == [(1, "a")]
    over = read(line + ending, max_line_bytes=len(line) - 1)
    assert f"line is {len(line)} bytes" in only_problems(over, 1)[0]


def test_an_over_long_line_past_the_byte_cap_stops_reading() -> None:
    data = b"x" * 5_000_000 + b"\n" + request("b") + b"\n"
    items = read(data, max_line_bytes=100, max_file_bytes=2_000_000)
    assert summary(items) == [(1, "file problem")]


def test_the_default_line_limit_message_gives_both_units() -> None:
    problem = oversized_line(3, 40_000_000, max_line_bytes=MAX_LINE_BYTES).problems[0]
    assert problem.startswith(
        "line is 40,000,000 bytes (38.1 MiB), over the limit of 33,554,432 bytes (32 MiB)"
    )


# --- laziness and read errors ----------------------------------------------------------------


class FailingStream(io.BytesIO):
    """Serves its first line, then fails like a broken disk or pipe."""

    def readline(self, size: int | None = -1, /) -> bytes:
        if self.tell() > 0:
            raise OSError(5, "Input/output error")
        return super().readline(size)


def test_items_are_yielded_before_the_rest_is_read_and_read_errors_become_input_errors() -> None:
    stream = FailingStream(request("a") + b"\n" + request("b") + b"\n")
    items = read_requests(stream, source="requests.jsonl")
    line_no, item = next(items)
    assert line_no == 1
    assert isinstance(item, ValidRequest)
    with pytest.raises(InputFileError, match=r"requests.jsonl:2: cannot be read"):
        next(items)


# --- garbage in, items out -------------------------------------------------------------------

garbage_lines = st.lists(
    st.binary(max_size=60)
    | st.sampled_from(
        [request("a"), request("a") + b"\r", b"\xef\xbb\xbf{}", b"  ", b'{"custom_id": "\xff"}']
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(garbage_lines, st.integers(min_value=1, max_value=5))
def test_garbled_files_only_ever_yield_items(lines: list[bytes], max_requests: int) -> None:
    data = b"\n".join(lines)
    items = read(data, max_line_bytes=40, max_requests=max_requests, max_file_bytes=400)
    assert items, "a file always yields at least one item"
    numbers = [line_no for line_no, _ in items]
    for line_no, item in items[:-1]:
        assert isinstance(item, ValidRequest | InvalidLine)
        assert line_no >= 1
    assert numbers[:-1] == sorted(set(numbers[:-1]))
    for _, item in items:
        if isinstance(item, FileProblem):
            assert item is items[-1][1]


# --- opening ---------------------------------------------------------------------------------


def test_open_request_file_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(request("a") + b"\n")
    with open_request_file(str(path)) as stream:
        assert summary(list(read_requests(stream, source=path.name))) == [(1, "a")]
    assert stream.closed


def test_dash_means_standard_input_which_is_left_open(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(request("a") + b"\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    with open_request_file("-") as stream:
        assert stream is stdin.buffer
        assert summary(list(read_requests(stream, source="<stdin>"))) == [(1, "a")]
    assert not stdin.buffer.closed


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.mark.parametrize(
    ("make", "path", "message"),
    [
        (None, "requests.jsonl", "requests.jsonl: no such file; check the path"),
        ("dir", "requests.jsonl", "requests.jsonl: is a directory; pass a .jsonl file"),
        (None, "missing/requests.jsonl", "missing/requests.jsonl: no such file; check the path"),
    ],
    ids=["missing", "directory", "missing directory"],
)
def test_paths_that_cannot_be_opened_raise_input_file_error(
    cwd: Path, make: str | None, path: str, message: str
) -> None:
    if make == "dir":
        (cwd / path).mkdir()
    with pytest.raises(InputFileError) as caught, open_request_file(path):
        pass
    assert caught.value.message == message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_an_unreadable_file_raises_input_file_error(cwd: Path) -> None:
    path = cwd / "requests.jsonl"
    path.write_bytes(b"{}\n")
    path.chmod(0)
    with pytest.raises(InputFileError, match="permission denied"), open_request_file(path.name):
        pass


def test_a_permission_error_raises_input_file_error(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs as root too, where chmod cannot make a file unreadable: the OS refusal is faked.
    def refuse(path: str, mode: str) -> BinaryIO:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("batchrun.input.reader.open", refuse, raising=False)
    with pytest.raises(InputFileError) as caught, open_request_file("requests.jsonl"):
        pass
    assert caught.value.message == (
        "requests.jsonl: permission denied; make the file readable or pass another file"
    )


# --- formatting ------------------------------------------------------------------------------


def test_problems_are_formatted_with_file_and_line_and_capped() -> None:
    items: list[InvalidLine | FileProblem] = [
        InvalidLine(3, None, ("first", "second")),
        InvalidLine(9, "x", ("third", "fourth")),
        FileProblem("requests.jsonl has more than 2 requests"),
    ]
    assert format_problems(items, source="requests.jsonl", max_problems=3) == [
        "requests.jsonl:3: first",
        "requests.jsonl:3: second",
        "requests.jsonl:9: third",
        "… and 2 more problems",
    ]
    assert format_problems(items, source="requests.jsonl", max_problems=4)[-1] == (
        "… and 1 more problem"
    )
    assert format_problems(items, source="requests.jsonl")[-1] == (
        "requests.jsonl has more than 2 requests"
    )


def test_problems_are_capped_at_twenty_by_default() -> None:
    items = [InvalidLine(n, None, ("bad",)) for n in range(1, 1001)]
    lines = format_problems(items, source="f")
    assert len(lines) == 21
    assert lines[-1] == "… and 980 more problems"
