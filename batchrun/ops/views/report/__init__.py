"""The HTML report of one batch: its data read from the store (``data``), its SVG charts
(``charts``, drawn with ``bars``, ``layout``, ``axes`` and ``svg``) and the page (``page``).
Imports ops-level and lower modules only, and of the views ``limits`` and ``run_limits``,
never ``dashboard``."""
