"""Results out: the export formats registry and the batch object.

Holds: ``formats`` (the registry: ``anthropic``, ``flat``, ``csv``, ``parquet``),
``anthropic``, ``flat`` and ``parquet`` (the writers), ``atomic`` (files written whole or not
at all), ``batch_object`` (Anthropic's ``MessageBatch`` shape, and what ``status`` adds),
``status_rows`` (a batch's status as text rows, shared by ``status`` and the report),
``joined`` (results joined to their table rows: the columns and records), ``joined_files``
(those records as JSON lines, CSV, Parquet or pyarrow batches), ``shapes`` (column types
from a JSON Schema or from the input's values).
May import: ``config`` (prices), ``records``, ``errors``, ``structured`` (reading answers);
pyarrow (only here, and only when the ``parquet`` format writes).
"""
