"""`submit TABLE --template`: rows of a CSV, TSV, Parquet or JSON-lines table rendered into
requests, stored with their rows in one transaction; every problem listed by row, nothing
stored; and the whole way through the simulator on a socket: submit, run, results, with
structured answers asked for natively or by a forced tool call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from batchrun.simulator import SimulatorConfig, running_simulator
from batchrun.store.store import Store
from batchrun.structured.answers import ValidAnswer, read_answer
from tests.clitools import invoke, stored_batches
from tests.conftest import cli_env

TEMPLATE = """\
model = "claude-sonnet-4-5"
max_tokens = 300
system = "You triage support tickets.{{ '' }}"
user = "Ticket {{ ticket_id }} ({{ row['product line'] }}): {{ subject }}\\n\\n{{ body }}"
id = "ticket-{{ ticket_id }}"
temperature = 0.2
"""
SCHEMA = """
[output]
type = "object"
required = ["category", "priority", "summary"]
additionalProperties = false
[output.properties.category]
type = "string"
enum = ["billing", "bug", "account", "other"]
[output.properties.priority]
type = "integer"
minimum = 1
maximum = 5
[output.properties.summary]
type = "string"
maxLength = 80
"""
HEADER = ["ticket_id", "subject", "body", "product line"]


def tickets(count: int) -> list[dict[str, str]]:
    return [
        {
            "ticket_id": str(1000 + n),
            "subject": f"Subject, number {n}",
            "body": f'Body of "ticket" {n}\nsecond line',
            "product line": ["app", "web"][n % 2],
        }
        for n in range(count)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=HEADER, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)  # no config file of the machine may be found
    yield CliRunner(env=cli_env(db_url, tmp_path / "home"))


def template_file(tmp_path: Path, text: str = TEMPLATE + SCHEMA) -> Path:
    path = tmp_path / "triage.toml"
    path.write_text(text)
    return path


def stored_requests(store: Store, batch_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from batchrun.store import tables as t

    with store.engine.connect() as conn:
        rows = conn.execute(
            select(t.requests.c.line_no, t.requests.c.custom_id, t.requests.c.params)
            .where(t.requests.c.batch_id == batch_id)
            .order_by(t.requests.c.line_no)
        ).all()
    return [{"line_no": n, "custom_id": c, "params": json.loads(p)} for n, c, p in rows]


def test_a_csv_becomes_one_request_per_row_stored_with_its_row(
    cli: CliRunner, tmp_path: Path, store: Store
) -> None:
    rows = tickets(5)
    table = write_csv(tmp_path / "tickets.csv", rows)

    submitted = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(template_file(tmp_path)),
        "--endpoint",
        "simulator",
    )

    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    requests = stored_requests(store, batch_id)
    assert [r["custom_id"] for r in requests] == [f"ticket-{1000 + n}" for n in range(5)]
    first = requests[0]["params"]
    assert first["messages"] == [
        {
            "role": "user",
            "content": 'Ticket 1000 (app): Subject, number 0\n\nBody of "ticket" 0\nsecond line',
        }
    ]
    assert first["system"] == "You triage support tickets."
    assert first["temperature"] == 0.2
    # The simulator endpoint takes output_config: the schema is asked for natively.
    assert first["output_config"]["format"]["type"] == "json_schema"
    assert first["output_config"]["format"]["schema"]["required"] == [
        "category",
        "priority",
        "summary",
    ]
    kept = store.batches.table_rows(batch_id)
    assert [row_no for row_no, _ in kept] == [1, 2, 3, 4, 5]
    assert [json.loads(data) for _, data in kept] == rows


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kind", ["tsv", "jsonl", "parquet", "stdin-csv"])
def test_tsv_json_lines_parquet_and_standard_input_give_the_same_requests(
    cli: CliRunner, tmp_path: Path, store: Store, kind: str
) -> None:
    rows = tickets(4)
    reference = invoke(
        cli,
        "submit",
        str(write_csv(tmp_path / "t.csv", rows)),
        "--template",
        str(template_file(tmp_path)),
        "--endpoint",
        "simulator",
    )
    stdin: bytes | None = None
    if kind == "tsv":
        args = [str(write_csv(tmp_path / "t.tsv", rows, delimiter="\t"))]
    elif kind == "jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = [str(path)]
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "t.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
        args = [str(path)]
    else:
        stdin = write_csv(tmp_path / "s.csv", rows).read_bytes()
        args = ["-"]

    other = invoke(
        cli,
        "submit",
        *args,
        "--template",
        str(template_file(tmp_path)),
        "--endpoint",
        "simulator",
        input=stdin,
    )

    assert reference.exit_code == 0 and other.exit_code == 0, other.output
    expected = stored_requests(store, reference.stdout.strip())
    assert stored_requests(store, other.stdout.strip()) == expected
    assert [json.loads(d) for _, d in store.batches.table_rows(other.stdout.strip())] == rows


def refused(cli: CliRunner, *args: str, input: bytes | None = None) -> str:
    result = invoke(cli, "submit", *args, "--endpoint", "simulator", input=input)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert stored_batches(cli) == []
    return result.stderr


def test_a_missing_column_is_refused_naming_each_row_and_the_columns_it_has(
    cli: CliRunner, tmp_path: Path
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ticket_id,subject,product line\n1,a,app\n2,b,web\n")

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path)))

    for row in (1, 2):
        assert (
            f"{table}:row {row}: the user template uses 'body', which is not a column of this "
            "row; its columns are 'ticket_id', 'subject', 'product line'" in stderr
        )
    assert "nothing was stored" in stderr


def test_an_undefined_attribute_and_a_bad_rendered_request_are_listed_by_row(
    cli: CliRunner, tmp_path: Path
) -> None:
    template = template_file(
        tmp_path,
        'model = "m"\nmax_tokens = 10\nuser = "{{ subject.nothing }}"\n'
        'metadata = {user_id = "u"}\n',
    )
    table = write_csv(tmp_path / "t.csv", tickets(2))

    stderr = refused(cli, str(table), "--template", str(template))

    assert (
        f"{table}:row 1: the user template uses something undefined: 'str object' has no"
        " attribute 'nothing'" in stderr
    )
    assert f"{table}:row 2:" in stderr


def test_colliding_ids_are_refused_naming_both_rows(cli: CliRunner, tmp_path: Path) -> None:
    rows = tickets(3)
    rows[2]["ticket_id"] = rows[0]["ticket_id"]
    table = write_csv(tmp_path / "t.csv", rows)

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path)))

    assert f"{table}:row 3: custom_id 'ticket-1000' is already used on row 1" in stderr


def test_an_id_that_does_not_fit_is_refused_unless_hashed(
    cli: CliRunner, tmp_path: Path, store: Store
) -> None:
    rows = tickets(2)
    rows[0]["subject"] = "a subject with spaces and a slash / " + "x" * 60
    table = write_csv(tmp_path / "t.csv", rows)
    text = TEMPLATE.replace('id = "ticket-{{ ticket_id }}"', 'id = "{{ subject }}"')

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path, text)))

    assert (
        f"{table}:row 1: the id template gave 'a subject with spaces and a slash / xxxx…'" in stderr
    )
    assert "set hash_long_ids = true in the template" in stderr
    assert f"{table}:row 2:" in stderr  # "Subject, number 1" has a space and a comma

    hashed = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(template_file(tmp_path, "hash_long_ids = true\n" + text)),
        "--endpoint",
        "simulator",
    )
    assert hashed.exit_code == 0, hashed.output
    ids = [r["custom_id"] for r in stored_requests(store, hashed.stdout.strip())]
    assert all(len(i) <= 64 for i in ids)
    assert ids[0].startswith("a-subject-with-spaces-and-a-slash-xxx")
    assert ids[1].startswith("Subject-number-1-")
    again = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(template_file(tmp_path, "hash_long_ids = true\n" + text)),
        "--endpoint",
        "simulator",
    )
    assert [r["custom_id"] for r in stored_requests(store, again.stdout.strip())] == ids


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty; a table needs a header row"),
        (b"ticket_id,subject,body,product line\n", "has a header row but no rows"),
        (b"\xff\xfeh\x00", "is UTF-16 encoded; save it as UTF-8"),
        (b"a,a\n1,2\n", "the header names column 'a' twice"),
    ],
)
def test_an_empty_or_unreadable_table_is_refused_in_one_line(
    cli: CliRunner, tmp_path: Path, content: bytes, expected: str
) -> None:
    table = tmp_path / "t.csv"
    table.write_bytes(content)

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path)))

    assert expected in stderr
    assert "nothing was stored" in stderr


def test_text_that_is_not_utf8_names_its_row_and_column(cli: CliRunner, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_bytes(
        b"ticket_id,subject,body,product line\n1,ok,fine,app\n2,caf\xe9,x,web\n3,a,b,c\n"
    )

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path)))

    assert f"{table}:row 2: column 'subject' is not valid UTF-8; save the file as UTF-8" in stderr
    assert f"{table}:row 1" not in stderr and f"{table}:row 3" not in stderr


@pytest.mark.sqlite_only
def test_a_line_longer_than_a_request_may_be_is_refused_without_reading_it_whole(
    cli: CliRunner, tmp_path: Path
) -> None:
    table = tmp_path / "t.csv"
    with table.open("wb") as out:
        out.write(b"ticket_id,subject,body,product line\n1,a,b,c\n2,a,")
        chunk = b"x" * (1024 * 1024)
        for _ in range(40):  # 40 MiB, over the 32 MiB of one request
            out.write(chunk)
        out.write(b",c\n")

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path)))

    assert f"{table}: row 2 is 41,943,0" in stderr
    assert "over the limit of 33,554,432 bytes (32 MiB) for one row" in stderr


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (
            '[output]\ntype = "object"\n[output.properties.a]\ntype = "strnig"\n',
            "[output]: not a JSON Schema: 'strnig' is not valid under any of the given schemas",
        ),
        ('[output]\ntype = "array"\n', "[output]: the schema must describe an object"),
        (
            '[output]\ntype = "object"\nrequired = "a"\n',
            "[output]: not a JSON Schema: 'a' is not of type 'array' (at required)",
        ),
    ],
)
def test_an_output_that_is_not_a_json_schema_is_refused(
    cli: CliRunner, tmp_path: Path, schema: str, expected: str
) -> None:
    table = write_csv(tmp_path / "t.csv", tickets(1))

    stderr = refused(cli, str(table), "--template", str(template_file(tmp_path, TEMPLATE + schema)))

    assert expected in stderr


def test_a_schema_file_replaces_the_templates_output(
    cli: CliRunner, tmp_path: Path, store: Store
) -> None:
    table = write_csv(tmp_path / "t.csv", tickets(1))
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}}))

    submitted = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(template_file(tmp_path)),
        "--schema",
        str(schema),
        "--endpoint",
        "simulator",
    )
    schema.write_text("{not json")
    bad = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(template_file(tmp_path)),
        "--schema",
        str(schema),
        "--endpoint",
        "simulator",
    )
    alone = invoke(cli, "submit", str(table), "--schema", str(schema))

    assert submitted.exit_code == 0, submitted.output
    (request,) = stored_requests(store, submitted.stdout.strip())
    assert request["params"]["output_config"]["format"]["schema"]["properties"] == {
        "ok": {"type": "boolean"}
    }
    assert bad.exit_code == 1 and f"{schema}: is not JSON" in bad.stderr
    assert alone.exit_code == 2 and "--schema needs --template" in alone.stderr


def simulator_config(tmp_path: Path, url: str, mode: str) -> Path:
    config = tmp_path / "batchrun.toml"
    config.write_text(
        f'[endpoints.sim]\nbase_url = "{url}"\nauth = "none"\nstructured_outputs = "{mode}"\n'
    )
    return config


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_submit_run_results_through_the_simulator_on_a_socket(
    cli: CliRunner, tmp_path: Path, store: Store, mode: str
) -> None:
    """A fifth of the answers are made invalid by the simulator; each is repaired (once, the
    default): every row that succeeds has an answer that matches the schema (checked with
    the jsonschema library), the others end invalid_output with their last answer in the
    flat export, and status shows the repair sends and their cost."""
    rows = tickets(60)
    table = write_csv(tmp_path / "tickets.csv", rows)
    template = template_file(
        tmp_path,
        TEMPLATE.replace("tickets.{{ '' }}", "tickets. [[sim:invalid_output=0.2]]") + SCHEMA,
    )
    schema = {
        "type": "object",
        "required": ["category", "priority", "summary"],
        "additionalProperties": False,
        "properties": {
            "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "summary": {"type": "string", "maxLength": 80},
        },
    }
    with running_simulator(SimulatorConfig(seed=7)) as url:
        config = simulator_config(tmp_path, url, mode)
        submitted = invoke(
            cli,
            "submit",
            str(table),
            "--template",
            str(template),
            "--endpoint",
            "sim",
            BATCHRUN_CONFIG=str(config),
        )
        assert submitted.exit_code == 0, submitted.output
        batch_id = submitted.stdout.strip()
        ran = invoke(cli, "run", batch_id, BATCHRUN_CONFIG=str(config))
        results = invoke(cli, "results", batch_id, BATCHRUN_CONFIG=str(config))
        flat = invoke(cli, "results", batch_id, "--format", "flat", BATCHRUN_CONFIG=str(config))
        shown = invoke(cli, "status", batch_id, BATCHRUN_CONFIG=str(config))
        status = json.loads(
            invoke(cli, "status", batch_id, "--json", BATCHRUN_CONFIG=str(config)).stdout
        )

    lines = [json.loads(line) for line in results.stdout.splitlines()]
    # Exit 3: some requests ended errored (invalid_output), 0 when none did.
    errored = sum(line["result"]["type"] == "errored" for line in lines)
    assert ran.exit_code == (3 if errored else 0), ran.output
    assert [line["custom_id"] for line in lines] == [f"ticket-{r['ticket_id']}" for r in rows]
    sent = stored_requests(store, batch_id)[0]["params"]
    if mode == "tool":
        assert sent["tool_choice"] == {"type": "tool", "name": "answer"}
        assert sent["tools"][0]["input_schema"] == schema
        assert "output_config" not in sent
    else:
        assert sent["output_config"]["format"]["schema"] == schema
    validator = Draft202012Validator(schema)
    succeeded = [line for line in lines if line["result"]["type"] == "succeeded"]
    for line in succeeded:
        answer = read_answer(line["result"]["message"], schema, mode)
        assert isinstance(answer, ValidAnswer) and validator.is_valid(answer.value)
    # 60 draws of a 20 % share: far outside 3..21 repairs is a broken share, not chance; a
    # repair fails again at that share too, so about 1 in 25 rows ends invalid_output.
    repairs = status["repair_sends"]
    assert 3 <= repairs <= 21
    assert status["repair_cost_usd"] > 0 and status["cost_usd"] > status["repair_cost_usd"]
    assert f"{repairs:,} sent" in shown.stdout
    assert f", {repairs:,} repaired" in ran.stderr
    records = [json.loads(line) for line in flat.stdout.splitlines()]
    broken = [r for r in records if r["status"] == "errored"]
    assert len(succeeded) + len(broken) == 60 and len(broken) <= repairs
    for record in broken:
        assert record["error_type"] == "invalid_output"
        assert record["error_message"].startswith("invalid_output: the answer does not match")
        assert json.loads(record["raw_body"])["type"] == "message"
    assert sum(r["attempts"] for r in records) == 60 + repairs


SAMPLES = Path(__file__).resolve().parents[2] / "samples"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.sqlite_only
def test_the_sample_tickets_run_offline_and_every_answer_matches_the_schema(
    cli: CliRunner,
) -> None:
    import tomllib

    submitted = invoke(
        cli,
        "submit",
        str(SAMPLES / "tickets.csv"),
        "--template",
        str(SAMPLES / "triage.toml"),
        "--endpoint",
        "simulator",
    )
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()
    ran = invoke(cli, "run", batch_id)
    results = invoke(cli, "results", batch_id)

    assert ran.exit_code == 0, ran.output
    schema = tomllib.loads((SAMPLES / "triage.toml").read_text())["output"]
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"T-{1001 + n}" for n in range(24)]
    answers = [read_answer(line["result"]["message"], schema, "native") for line in lines]
    assert all(isinstance(answer, ValidAnswer) for answer in answers), answers


def test_the_template_on_the_tables_page_is_a_valid_template() -> None:
    import tomllib

    from batchrun.input.templates import compile_template

    page = (DOCS / "tables.md").read_text()
    block = page.split("## The template\n\n```toml\n", 1)[1].split("```", 1)[0]

    template = compile_template(tomllib.loads(block), source="tables.md")

    assert template.output is not None and template.output["required"] == ["category", "priority"]


@pytest.mark.parametrize(
    ("user", "words"),
    [
        ("{{ 'x' * 10**10 }}", "would make 10,000,000,000 items"),
        ("{{ [1] * 10**9 }}", "would make 1,000,000,000 items"),
        ("{{ 9 ** 1000000 }}", "is too large a number"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}xxxx{% endfor %}{% endfor %}",
            "renders more than 33,554,432 characters",
        ),
    ],
)
def test_a_template_that_would_make_a_huge_value_is_refused_by_row_without_making_it(
    cli: CliRunner, tmp_path: Path, user: str, words: str
) -> None:
    text = f'model = "m"\nmax_tokens = 10\nuser = {json.dumps(user)}\n'
    template = template_file(tmp_path, text)
    table = write_csv(tmp_path / "t.csv", tickets(1))

    stderr = refused(cli, str(table), "--template", str(template))

    assert f"{table}:row 1: the user template" in stderr
    assert words in " ".join(stderr.split())
