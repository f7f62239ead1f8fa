"""Alembic environment for batchrun.

batchrun runs migrations itself (``batchrun db upgrade``, and on first use of a database), by
passing an open connection in ``config.attributes["connection"]``. Running ``alembic`` by hand
with ``-x url=...`` works too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from batchrun.store.tables import metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database with: alembic -x url=sqlite:///path.db upgrade head")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


main()
