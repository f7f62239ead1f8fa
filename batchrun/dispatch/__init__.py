"""The worker's loop: claim → limit → send → decide → write, durably.

Holds: ``dispatcher`` (the loop only), ``seams`` (the Protocols it is handed: sender,
observer, linger), ``decisions`` (pure: an answer → what to write), ``repairs`` (a
structured answer reviewed, a repair send made), ``routing`` (pools, failover, the gentle
start), ``capacity`` (how many requests in flight), ``leases`` (taken, renewed, checked
before a send), ``health`` (a pool member out of or back in the rotation), ``counts`` (the
counts of a dispatch: ``RunReport``), ``writer`` (group commit), ``worker_db`` (the worker's
one async route to the database) with ``dbthread`` and ``controls`` (control checks riding
on its rate-bank takes), ``settings`` (how a worker dispatches:
``DispatchConfig`` and its defaults), ``clock`` and ``owners``.
May import: ``limits``, ``input`` (token estimates), ``structured``, ``records``,
``errors``. Never httpx or SQLAlchemy: senders and the store are passed in (the store only
named for types).
"""
