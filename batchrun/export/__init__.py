"""Results out: the export formats registry and the batch object.

Holds: ``formats`` (the registry: ``anthropic``, ``flat``, ``csv``, ``parquet``),
``anthropic``, ``flat`` and ``parquet`` (the writers), ``atomic`` (files written whole or not
at all), ``batch_object`` (Anthropic's ``MessageBatch`` shape, and what ``status`` adds),
``status_rows`` (a batch's status as text rows, shared by ``status`` and the report).
May import: ``config`` (prices), ``records``, ``errors``; pyarrow (only here, and only when
the ``parquet`` format writes).
"""
