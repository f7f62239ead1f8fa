"""What is shown of the runs: read models over the store, for /metrics, the dashboard and
``batchrun report``. They read; :mod:`batchrun.ops` runs.

Holds: ``metrics`` (the snapshot /metrics shows), ``dashboard`` (the dashboard's figures:
cards, series, latest errors), ``limits`` (the limits in force of a batch and its use of
them: the rows the dashboard and the report both show), ``throughput`` (a batch's answers
and tokens per minute, which the card shows and the limits measure use by), ``run_limits``
(the limits each run recorded, read back per run), ``report`` (``batchrun report``: its
data, charts and page), ``progress`` (a running run's figures as text: the CLI's progress
lines and the notebook's) and ``notebook`` (the Python API's live progress: a widget in a
notebook, text lines elsewhere).
May import: what :mod:`batchrun.ops` may, and the values the run modules give (``run_types``,
``limit_recorder``'s constants); the run modules never import ``views``. The report reads
the limits through ``limits``, never through ``dashboard``. Import contracts in
pyproject.toml check both rules.
"""
