"""Bad request files through the real CLI: every problem is one `file:line: what; fix` line,
the command exits 1 without a traceback, and nothing is stored."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from batchrun.input.validation import MAX_LINE_BYTES
from batchrun.simulator import create_app, running_simulator
from tests.clitools import invoke, runner, stored_batches

MiB = 1024 * 1024
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()


def params(**changes: Any) -> dict[str, Any]:
    """Valid Messages params; a value of ``...`` removes the key."""
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not ...}


def line(custom_id: Any = "a", **changes: Any) -> bytes:
    obj: dict[str, Any] = {"custom_id": custom_id, "params": params(**changes)}
    if custom_id is ...:
        del obj["custom_id"]
    return json.dumps(obj).encode()


def image(**source: Any) -> dict[str, Any]:
    block_source = {"type": "base64", "media_type": "image/png", "data": PNG, **source}
    return {"role": "user", "content": [{"type": "image", "source": block_source}]}


def lines(*items: bytes) -> bytes:
    return b"".join(item + b"\n" for item in items)


@pytest.fixture
def cli(sqlite_url: str) -> CliRunner:
    return runner(sqlite_url)


# (case id, file content, extra submit arguments, line number, expected message fragment).
# Line 0 means a problem with the whole file: the message names the file, without a line.
LINE_CASES: list[tuple[str, bytes, list[str], int, str]] = [
    ("not json", lines(line("a"), b"{oops"), [], 2, "line is not valid JSON"),
    ("not an object", lines(b"[1, 2]"), [], 1, "line must be a JSON object, not an array"),
    ("custom_id missing", lines(line(...)), [], 1, 'custom_id is missing; add "custom_id"'),
    ("custom_id empty", lines(line("")), [], 1, "custom_id is empty; give each request"),
    ("custom_id invalid", lines(line("a b")), [], 1, "custom_id 'a b' may only contain"),
    (
        "custom_id too long",
        lines(line("x" * 65)),
        [],
        1,
        f"custom_id '{'x' * 40}…' is 65 characters long; use at most 64",
    ),
    ("custom_id a number", lines(line(7)), [], 1, "custom_id must be a string, not an integer"),
    (
        "duplicate custom_id names both lines",
        lines(line("a"), line("b"), line("a")),
        [],
        3,
        "custom_id 'a' is already used on line 1; custom_ids must be unique",
    ),
    ("params missing", lines(b'{"custom_id": "a"}'), [], 1, "params is missing; put the"),
    (
        "params not an object",
        lines(b'{"custom_id": "a", "params": [1]}'),
        [],
        1,
        "params must be an object holding the Messages API request, not an array",
    ),
    ("model missing", lines(line(model=...)), [], 1, "params.model is missing"),
    ("max_tokens missing", lines(line(max_tokens=...)), [], 1, "params.max_tokens is missing"),
    (
        "max_tokens quoted",
        lines(line(max_tokens="1024")),
        [],
        1,
        "params.max_tokens must be an integer, not a string ('1024'); write 1024 without quotes",
    ),
    (
        "max_tokens fraction",
        lines(line(max_tokens=1.5)),
        [],
        1,
        "params.max_tokens must be an integer, not a number (1.5)",
    ),
    ("max_tokens zero", lines(line(max_tokens=0)), [], 1, "params.max_tokens is 0; it must be"),
    ("messages missing", lines(line(messages=...)), [], 1, "params.messages is missing"),
    ("messages empty", lines(line(messages=[])), [], 1, "params.messages is empty; add at least"),
    (
        "messages not a list",
        lines(line(messages="Hello")),
        [],
        1,
        "params.messages must be an array of messages, not a string",
    ),
    (
        "system role in messages",
        lines(line(messages=[{"role": "system", "content": "Be brief"}])),
        [],
        1,
        'params.messages[0].role \'system\' is not allowed; use "user" or "assistant" '
        "(put a system prompt in params.system)",
    ),
    (
        "content a number",
        lines(line(messages=[{"role": "user", "content": 5}])),
        [],
        1,
        "params.messages[0].content must be a string or a list of content blocks, not an integer",
    ),
    (
        "unknown block type",
        lines(line(messages=[{"role": "user", "content": [{"type": "txt", "text": "hi"}]}])),
        [],
        1,
        "params.messages[0].content[0].type 'txt' is not a Messages API content block type; "
        "did you mean 'text'?",
    ),
    (
        "image media type",
        lines(line(messages=[image(media_type="image/bmp")])),
        [],
        1,
        "params.messages[0].content[0].source.media_type 'image/bmp' is not supported; "
        "use one of image/jpeg, image/png, image/gif, image/webp",
    ),
    (
        "image base64",
        lines(line(messages=[image(data="not base64!")])),
        [],
        1,
        "params.messages[0].content[0].source.data is not valid base64",
    ),
    (
        "stream true",
        lines(line(stream=True)),
        [],
        1,
        'params.stream is true, which a batch does not allow; remove "stream"',
    ),
    ("invalid utf-8", lines(b'{"custom_id": "\xff"}'), [], 1, "line is not valid UTF-8 at byte"),
    (
        "unknown top-level key",
        lines(line(), b'{"custom_id": "b", "param": {}}'),
        [],
        2,
        "unknown key 'param' (did you mean 'params'?); a request line has only",
    ),
    (
        "openai style to another url",
        lines(
            json.dumps(
                {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
            ).encode()
        ),
        [],
        1,
        "url '/v1/chat/completions' is not the Messages API",
    ),
    (
        "blank lines keep physical line numbers",
        b"\xef\xbb\xbf\n\n" + lines(line("a"), b"", b"  ", line("b", max_tokens=-1)),
        [],
        6,
        "params.max_tokens is -1",
    ),
]

# Problems with the file as a whole: refused even with --skip-invalid.
FILE_CASES: list[tuple[str, bytes, list[str], str]] = [
    ("empty file", b"", [], "contains no requests; write one JSON request per line"),
    ("only blank lines", b"\n  \n\r\n", [], "contains no requests"),
    (
        "too many requests",
        lines(line("a"), line("b"), line("c")),
        ["--max-requests", "2"],
        "has more than 2 requests (stopped at line 3); split the file or pass --max-requests N",
    ),
    (
        "too many bytes",
        lines(line("a"), line("b")),
        ["--max-file-bytes", "150"],
        "is larger than 150 bytes (stopped at line 2); split the file or pass --max-file-bytes N",
    ),
    ("utf-16", "\n".join(["{}"] * 3).encode("utf-16"), [], "is UTF-16 encoded; save it as UTF-8"),
]


def refused(cli: CliRunner, path: Path, *args: str) -> str:
    """Submit ``path``; assert the refusal contract; return stderr."""
    result = invoke(cli, "submit", str(path), "--endpoint", "simulator", *args)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert stored_batches(cli) == []
    return result.stderr


@pytest.mark.parametrize(
    ("content", "args", "line_no", "fragment"),
    [case[1:] for case in LINE_CASES],
    ids=[case[0] for case in LINE_CASES],
)
def test_an_invalid_line_is_refused_with_file_line_and_fix(
    cli: CliRunner, tmp_path: Path, content: bytes, args: list[str], line_no: int, fragment: str
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)

    stderr = refused(cli, path, *args)

    assert f"error: {path}:{line_no}: {fragment}" in stderr or (
        f"\n{path}:{line_no}: {fragment}" in stderr
    ), stderr
    assert "nothing was stored; fix the lines above and submit again" in stderr


@pytest.mark.parametrize("skip_invalid", [[], ["--skip-invalid"]], ids=["default", "skip"])
@pytest.mark.parametrize(
    ("content", "args", "fragment"),
    [case[1:] for case in FILE_CASES],
    ids=[case[0] for case in FILE_CASES],
)
def test_a_file_level_problem_refuses_the_whole_file(
    cli: CliRunner,
    tmp_path: Path,
    content: bytes,
    args: list[str],
    fragment: str,
    skip_invalid: list[str],
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)

    stderr = refused(cli, path, *args, *skip_invalid)

    assert f"{path} {fragment}" in stderr, stderr


def test_a_line_over_the_request_size_limit_is_named_by_its_size(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    huge = b'{"custom_id": "a", "params": {"x": "' + b"a" * MAX_LINE_BYTES + b'"}}'
    path.write_bytes(lines(line("ok"), huge))

    stderr = refused(cli, path)

    assert f"{path}:2: line is {len(huge):,} bytes (32.0 MiB), over the limit of " in stderr
    assert "33,554,432 bytes (32 MiB) for one request; make the request smaller" in stderr


def test_the_caps_can_be_raised_with_flags(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines(line("a"), line("b"), line("c")))

    result = invoke(cli, "submit", str(path), "--max-requests", "3", "--max-file-bytes", "100000")

    assert result.exit_code == 0, result.output
    assert stored_batches(cli)[0]["request_counts"]["processing"] == 3


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("missing.jsonl", "no such file; check the path"), ("", "is a directory; pass a .jsonl file")],
    ids=["missing", "directory"],
)
def test_a_path_that_is_not_a_file_is_one_line(
    cli: CliRunner, tmp_path: Path, name: str, fragment: str
) -> None:
    path = tmp_path / name

    stderr = refused(cli, path)

    assert stderr.strip() == f"error: {path}: {fragment}"


def test_every_problem_is_listed_up_to_twenty_with_a_count_of_the_rest(
    cli: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines(*(line(f"r{i}", max_tokens=0) for i in range(25))))

    stderr = refused(cli, path)

    listed = [row for row in stderr.splitlines() if row.startswith((f"{path}:", "error: "))]
    assert len(listed) == 20
    assert f"{path}:20: params.max_tokens is 0" in stderr
    assert f"{path}:21:" not in stderr
    assert "… and 5 more problems" in stderr


def test_a_missing_model_is_filled_in_by_submit_model(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines(line("a", model=...)))

    refused(cli, path)
    accepted = invoke(cli, "submit", str(path), "--endpoint", "simulator", "--model", "m-1")

    assert accepted.exit_code == 0, accepted.output
    ran = invoke(cli, "run", accepted.stdout.strip())
    assert ran.exit_code == 0, ran.output
    result = json.loads(invoke(cli, "results", accepted.stdout.strip()).stdout)
    assert result["result"]["message"]["model"] == "m-1"


def test_a_bom_and_blank_lines_are_accepted(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines(line("a"), b"", b" \t", line("b")) + b"\r\n")

    result = invoke(cli, "submit", str(path), "--endpoint", "simulator")

    assert result.exit_code == 0, result.output
    assert "stored 2 requests" in result.stderr


def test_unknown_params_and_openai_style_lines_reach_the_api_untouched(
    cli: CliRunner, tmp_path: Path
) -> None:
    extra = {
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "x_gateway_route": ["eu", 3, None],
    }
    anthropic_params = params(**extra, max_tokens=2048)
    openai_params = params(messages=[{"role": "user", "content": "Grüße"}])
    path = tmp_path / "requests.jsonl"
    path.write_bytes(
        lines(
            json.dumps({"custom_id": "anthropic", "params": anthropic_params}).encode(),
            json.dumps(
                {
                    "custom_id": "openai",
                    "method": "POST",
                    "url": "/v1/messages",
                    "body": openai_params,
                }
            ).encode(),
        )
    )
    app = create_app()

    with running_simulator(app=app) as url:
        batch_id = invoke(cli, "submit", str(path)).stdout.strip()
        ran = invoke(cli, "run", batch_id, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-test")

    assert ran.exit_code == 0, ran.output
    sent = {entry.body_sha256 for entry in app.stats.log}
    assert sent == {
        hashlib.sha256(orjson.dumps(anthropic_params)).hexdigest(),
        hashlib.sha256(orjson.dumps(openai_params)).hexdigest(),
    }
    exported = invoke(cli, "results", batch_id).stdout.splitlines()
    assert [json.loads(row)["custom_id"] for row in exported] == ["anthropic", "openai"]


def test_the_default_request_cap_is_anthropics_100000(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    # Invalid lines count as requests too, and "{}" keeps the file small.
    path.write_bytes(b"{}\n" * 100_001)

    stderr = refused(cli, path, "--skip-invalid")

    # The reason the whole file is refused comes first, not after 200,000 line problems.
    assert stderr.startswith(
        f"error: {path} has more than 100,000 requests, Anthropic's batch limit (stopped at "
        "line 100,001); split the file or pass --max-requests N\n"
    )
    assert "… and 199,980 more problems\nnothing was stored" in stderr
