"""A run as a whole: planning, budgets, progress, the time limit, the run lock, and the
wiring of one dispatch. ``ops/`` runs a run; its ``views`` read what runs leave behind.

Holds: ``session`` (one run: one pass, or passes until stopped), ``passes`` (one pass: plan →
dispatch → summarise, its side tasks on the dispatch's exit stack), ``run_types`` (what a
run takes and gives: options, events, results, the exit-code rule), ``pass_plan`` (the
batches of a pass, with the run's options stored on them), ``forever`` (the joiner that adds
batches submitted during a forever pass to it), ``runner`` (endpoints → HTTP
clients → limiter → dispatcher), ``waiting`` (why a batch cannot be sent from here: what
``submit`` warns about without importing the run's machinery), ``monitor`` (progress,
cost, budgets, time limit),
``budget``, ``planning`` (``estimate``), ``runlock`` (one run per SQLite database),
``lane_wiring`` (a run's batch lane), ``processes`` (``run --processes N``: the parent that
starts N worker processes and shows them as one run), ``worker_process`` (one such worker),
``combined`` (one run's figures from its workers'), ``notices`` (a run's webhook
notifications: which, when, each once), ``limit_recorder`` (records the limits a run
sends each batch under), ``joined`` (a batch's results joined to its table rows, read
from the store) and ``views`` (the read models: /metrics, the dashboard, the
limits in force, ``batchrun report``).
May import: ``export``, ``config``, ``batch_lane``, ``dispatch``, ``transport``, ``limits``,
``input``, ``store``, ``records``, ``errors``, and the simulator for the in-process endpoint.
The run modules never import ``views`` (an import contract in pyproject.toml checks it).
"""
