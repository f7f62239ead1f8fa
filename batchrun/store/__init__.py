"""The job database: every statement batchrun runs, on SQLite or Postgres.

Holds: ``tables`` (the schema, with the request state machine written out), ``store`` (the
``Store`` class: batches and results) with ``base``, ``lifecycle`` (cancel, pause, expiry,
requeue), ``leases`` (claims), ``batch_rows`` (writing a new batch), ``reuse`` (answers
reused at submit, what a new request waits for, copies settled), ``provider_batches`` (the
batch lane's records), ``usage`` (usage by model: the one statement every view of tokens
and cost reads), ``series`` (answers per time bucket, by when they were sent: the
dashboard's and the report's), ``tallies`` (request totals for /metrics), ``timeline``
(errors and limits for the dashboard), ``history`` (latencies for ``batchrun report``),
``health`` (how each endpoint fares), ``run_limits``
(the limits each run sent a batch under) and ``rates`` (shared rate buckets), ``database``
(engines, migrations, and driver errors as messages), ``textsafe`` (text every column takes:
lone surrogates and NULs made safe at the write boundary, and for the exports).
May import: ``limits`` (bucket arithmetic), ``records``, ``errors``. With the migrations, the
only importer of SQLAlchemy and Alembic.
"""
