"""What the user configures: the config file and the price table.

Holds: ``file`` (where the TOML file is found, its schema, and the endpoints and prices it
yields), ``prices`` (built-in prices and costs derived from token usage), ``durations``
(``90s``, ``1h30m``, ``2d`` read as seconds).
May import: ``transport`` (endpoint definitions, auth styles), ``limits`` (dimensions),
``records``, ``errors``. pydantic checks the file here, at the edge.
"""
