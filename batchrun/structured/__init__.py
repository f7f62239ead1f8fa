"""Structured answers: a JSON Schema the answer must match, how a request asks for it, and
how an answer is read back and checked.

Holds: ``schemas`` (checking that a schema is a JSON Schema, and shaping a request to ask
for it: natively with ``output_config.format``, or by a forced tool call), ``answers`` (the
pure function that takes a Message's answer out and validates it against the schema).
May import: ``batchrun.errors`` and the ``jsonschema`` library only, so the input layer (which
shapes requests at submit) and the dispatch layer (which will repair invalid answers) can
both use it.
"""
