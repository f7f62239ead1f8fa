"""Structured answers: a JSON Schema the answer must match, how a request asks for it, and
how an answer is read back and checked.

Holds: ``schemas`` (checking that a schema is a JSON Schema, and shaping a request to ask
for it: natively with ``output_config.format``, or by a forced tool call), ``answers`` (the
pure function that takes a Message's answer out and validates it against the schema),
``repair`` (which requests asked for a schema, the follow-up turn that repairs an answer that
does not match it, the ``invalid_output`` error), ``review`` (what becomes of a final answer:
it stands, goes back for a repair, or ends ``invalid_output``).
May import: ``batchrun.errors``, ``batchrun.records`` and the ``jsonschema`` library only, so
the input layer (which shapes requests at submit), the store (which imports a provider
batch's answers) and the dispatch layer (which repairs invalid answers) can all use it.
"""
