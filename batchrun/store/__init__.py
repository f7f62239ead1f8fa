"""The job database: every statement batchrun runs, on SQLite or Postgres.

Holds: ``tables`` (the schema, with the request state machine written out), ``store`` (the
``Store``: the owner of the engine, with one attribute per section, each section a class in
the module of its name), ``base`` (what sections share), and the sections: ``batches``
(storing and reading batches, budgets, a batch's stats), ``results`` (the group commit and
reading results back) with ``recording`` (the statements that write results, on the caller's
connection; the provider-batch import uses them too), ``lifecycle`` (cancel, pause, hold,
expiry, requeue, delete, prune), ``leases`` (claims), ``lanes`` (each batch's and queued
request's lane), ``provider_batches`` (the batch lane's records), ``health`` (how each
endpoint fares), ``rates`` (shared rate buckets), ``usage`` (usage by model: the one
statement every view of tokens and cost reads), ``series`` (answers per time bucket, by
when they were sent: the dashboard's and the report's), ``tallies`` (request totals for
/metrics), ``timelines`` (errors and limits for the dashboard), ``latencies`` (latencies for
``batchrun report``), ``run_limits`` (the limits each run sent a batch under), ``repairs``
(answers that did not match their schema: kept as the request goes back for a repair, read
back to make it). Beside them:
``cache_warmth`` (the prompt-cache groups the batch lane keeps warm), ``batch_rows``
(writing a new batch), ``counters`` (each batch's requests per state, token
totals, reused results, first claim and last answer, kept by the statements that change
them), ``breakdowns`` (a batch's counters per key: usage by model, error types, answers per
endpoint, held requests per model), ``repair_counts`` (a batch's repair sends and their
tokens), ``reuse`` (answers reused at
submit, what a new request waits for, copies settled), ``cache_ttl`` (the 1-hour TTL
given to the prompt-cache groups of the batch lane), ``database`` (engines, migrations,
and driver errors as messages), ``textsafe`` (text every column takes: lone surrogates and
NULs made safe at the write boundary, and for the exports).
May import: ``limits`` (bucket arithmetic), ``structured`` (reviewing a provider batch's
structured answers), ``records``, ``errors``. With the migrations, the
only importer of SQLAlchemy and Alembic.
"""
