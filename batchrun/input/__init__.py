"""Requests in: read a file line by line, validate each line, estimate its input tokens,
and store the batch in one transaction.

Holds: ``sources`` (a file, stdin, a stream or Python objects as JSON lines), ``reader``
(file-level rules: BOM, blank lines, duplicates, caps) with ``seen_ids`` (the custom_ids used
so far, on disk past a point), ``validation`` and ``content`` (one
line's checks), ``wording`` (how problems are worded), ``images`` and ``estimate`` (input-token
estimates), ``digests`` (the params digest for reuse, the cached prompt prefix's key),
``ingest`` (stream into the store); for tables, ``tables`` (CSV, TSV, Parquet, JSON lines
read row by row), ``templates`` (a TOML prompt template rendered per row),
``image_parts`` (a template's image from a column: a URL, or a file read and
base64-encoded), ``table_ingest`` (rendered rows into the same ingest, with the rows
kept; and into the estimate) and ``frames`` (tables in memory: DataFrames, pyarrow Tables,
dicts; a Pydantic model as the schema).
May import: ``batchrun.records``, ``batchrun.errors`` and ``batchrun.structured`` (a
template's answer schema); the store only for types. pandas and pyarrow objects are read
through their own methods, never imported here.
"""
