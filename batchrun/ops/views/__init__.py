"""What is shown of the runs: read models over the store, for /metrics, the dashboard and
``batchrun report``. They read; :mod:`batchrun.ops` runs.

Holds: ``metrics`` (the snapshot /metrics shows), ``dashboard`` (the dashboard's figures:
throughput, limits, series), ``run_limits`` (the limits each run recorded, read back per
run) and ``report`` (``batchrun report``: its data, charts and page).
May import: what :mod:`batchrun.ops` may, and the values the run modules give.
"""
