"""Client.submit_table: a template given as a dict and a schema as a dict; the rows stored in
the batch's own transaction (a refusal inside it leaves no row behind); --skip-invalid keeps
the rows that cannot be rendered as errored results, with their rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import batchrun
from batchrun.store.store import Store

TEMPLATE = {"model": "claude-sonnet-4-5", "max_tokens": 50, "user": "Say {{ word }}"}


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[batchrun.Client]:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as opened:
        yield opened


def table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "words.csv"
    path.write_text(text)
    return path


def count_rows(store: Store) -> int:
    from sqlalchemy import func, select

    from batchrun.store import tables as t

    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.table_rows)).scalar_one())


def test_a_dict_template_and_schema_make_a_batch_with_its_rows(
    client: batchrun.Client, tmp_path: Path, store: Store
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}

    batch = client.submit_table(
        table(tmp_path, "word\nhello\nworld\n"),
        template=TEMPLATE,
        output=schema,
        endpoint="simulator",
    )

    assert batch.request_counts.processing == 2
    assert [json.loads(data) for _, data in store.batches.table_rows(batch.id)] == [
        {"word": "hello"},
        {"word": "world"},
    ]
    assert store.batches.table_rows(batch.id, after_row_no=1, limit=5)[0][0] == 2
    client.cancel(batch.id)
    client.delete(batch.id)
    assert count_rows(store) == 0


def test_a_refusal_inside_the_transaction_leaves_no_row(
    client: batchrun.Client, tmp_path: Path, store: Store
) -> None:
    with pytest.raises(batchrun.UnpricedModelsError):
        client.submit_table(
            table(tmp_path, "word\nhello\n"),
            template={**TEMPLATE, "model": "model-without-a-price"},
            endpoint="simulator",
            max_cost_usd=1.0,
        )

    assert client.list() == []
    assert count_rows(store) == 0


def test_skip_invalid_keeps_rows_that_cannot_be_rendered_as_errored_results(
    client: batchrun.Client, tmp_path: Path, store: Store
) -> None:
    skipped: list[str] = []
    path = table(tmp_path, "word,id\nhello,a\nbad,a b\nworld,c\n")

    batch = client.submit_table(
        path,
        template={**TEMPLATE, "id": "{{ id }}"},
        endpoint="simulator",
        skip_invalid=True,
        on_skipped=skipped.append,
    )

    assert batch.request_counts.processing == 2 and batch.request_counts.errored == 1
    assert len(skipped) == 1 and skipped[0].startswith(f"{path}:row 2: the id template gave")
    assert [row_no for row_no, _ in store.batches.table_rows(batch.id)] == [1, 2, 3]
    (line,) = client.results(batch.id, partial=True)
    assert line["custom_id"] == "line-2"
    assert line["result"]["error"]["error"]["message"] == skipped[0]
