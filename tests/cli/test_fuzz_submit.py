"""Random and garbled request files: submit never raises anything but InputFileError and never
stores part of a batch. Either the batch has exactly the lines it should, or nothing is stored.

Files are built from pieces whose validity is known by construction (a valid request, a
truncated one, random bytes or text, a broken field, a reused custom_id, blank lines), so the
test knows what each file must give: refused whole, or stored with N queued and M errored.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batchrun.errors import InputFileError
from batchrun.input.ingest import submit_requests
from batchrun.store.store import Store
from tests.clitools import invoke, runner, stored_batches

BLANK_LINES = [b"", b"  ", b"\t", b"\r"]
BAD_VALUES: list[Any] = [0, -1, "5", 1.5, None, True, [], {}]
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class Piece:
    """One physical line and what it is: "valid", "invalid" or "blank"."""

    kind: str
    raw: bytes


def valid(custom_id: str) -> bytes:
    params = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "params": params}, separators=(",", ":")).encode()


@st.composite
def pieces(draw: st.DrawFn) -> list[Piece]:
    out: list[Piece] = []
    for index in range(draw(st.integers(0, 12))):
        choice = draw(
            st.sampled_from(["valid", "prefix", "bytes", "text", "field", "dup", "blank"])
        )
        line = valid(f"id-{index}")
        if choice == "valid":
            out.append(Piece("valid", line))
        elif choice == "prefix":
            # Any proper prefix of a JSON object is incomplete JSON.
            out.append(Piece("invalid", line[: draw(st.integers(1, len(line) - 1))]))
        elif choice == "bytes":
            raw = draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b))
            out.append(Piece("invalid" if raw.strip() else "blank", raw))
        elif choice == "text":
            text = draw(st.text(min_size=1, max_size=40).filter(lambda t: "\n" not in t))
            raw = text.encode()
            out.append(Piece("invalid" if raw.strip() else "blank", raw))
        elif choice == "field":
            obj = json.loads(line)
            field = draw(st.sampled_from(["max_tokens", "messages", "model"]))
            obj["params"][field] = draw(st.sampled_from(BAD_VALUES))
            if field == "model" and obj["params"]["model"] == "5":
                obj["params"]["model"] = 5
            out.append(Piece("invalid", json.dumps(obj).encode()))
        elif choice == "dup" and any(piece.kind == "valid" for piece in out):
            first = next(piece for piece in out if piece.kind == "valid")
            out.append(Piece("invalid", first.raw))
        else:
            out.append(Piece("blank", draw(st.sampled_from(BLANK_LINES))))
    return out


def content_of(parts: list[Piece], bom: bool, final_newline: bool) -> bytes:
    data = b"\n".join(piece.raw for piece in parts)
    if final_newline and parts:
        data += b"\n"
    return (UTF8_BOM if bom else b"") + data


def expected(
    parts: list[Piece], data: bytes, skip_invalid: bool, max_requests: int
) -> tuple[int, int] | None:
    """(queued, errored) if the file must be stored, None if it must be refused whole."""
    # A UTF-8 BOM is skipped at the start of the file: a first line of only a BOM is blank.
    if parts and not data.removeprefix(UTF8_BOM).split(b"\n", 1)[0].strip():
        parts = [Piece("blank", parts[0].raw), *parts[1:]]
    queued = sum(piece.kind == "valid" for piece in parts)
    errored = sum(piece.kind == "invalid" for piece in parts)
    if data.startswith(UTF16_BOMS) or not 0 < queued + errored <= max_requests:
        return None
    if errored and not skip_invalid:
        return None
    return queued, errored


def test_garbled_files_are_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'fuzz.db'}")

    @settings(max_examples=100, deadline=None)
    @given(
        parts=pieces(),
        bom=st.booleans(),
        final_newline=st.booleans(),
        skip_invalid=st.booleans(),
        max_requests=st.integers(1, 15),
    )
    def check(
        parts: list[Piece], bom: bool, final_newline: bool, skip_invalid: bool, max_requests: int
    ) -> None:
        data = content_of(parts, bom, final_newline)
        before = {batch.id for batch in store.batches.all()}
        try:
            batch_id: str | None = submit_requests(
                store,
                io.BytesIO(data),
                source="fuzz.jsonl",
                endpoint="simulator",
                now=datetime.now(UTC),
                skip_invalid=skip_invalid,
                max_requests=max_requests,
            )
        except InputFileError as exc:
            batch_id = None
            lines = exc.message.splitlines()
            if len(lines) == 1:  # a problem of the file alone (no requests): one line
                assert lines[0].startswith("fuzz.jsonl ") and lines[0].endswith(
                    "; nothing was stored"
                ), lines
            else:
                assert lines[-1] == "nothing was stored; fix the lines above and submit again"
                assert all(line.startswith(("fuzz.jsonl", "… and ")) for line in lines[:-1])
        new = {batch.id for batch in store.batches.all()} - before
        want = expected(parts, data, skip_invalid, max_requests)
        if want is None:
            assert batch_id is None
            assert new == set()
        else:
            assert new == {batch_id}
            assert batch_id is not None
            counts = store.batches.get(batch_id).counts
            assert (counts.processing, counts.errored, counts.total) == (*want, sum(want))

    try:
        check()
    finally:
        store.close()


def test_garbled_files_through_the_cli_never_give_a_traceback(tmp_path: Path) -> None:
    cli: CliRunner = runner(f"sqlite:///{tmp_path / 'fuzz.db'}")
    path = tmp_path / "fuzz.jsonl"

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(parts=pieces(), skip_invalid=st.booleans())
    def check(parts: list[Piece], skip_invalid: bool) -> None:
        data = content_of(parts, bom=False, final_newline=True)
        path.write_bytes(data)
        before = len(stored_batches(cli))
        flags = ["--skip-invalid"] if skip_invalid else []

        result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *flags)

        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        want = expected(parts, data, skip_invalid, max_requests=100_000)
        assert result.exit_code == (1 if want is None else 0), result.output
        assert len(stored_batches(cli)) == before + (0 if want is None else 1)

    check()
