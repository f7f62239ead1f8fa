"""The worker's loop: claim → limit → send → decide → write, durably.

Holds: ``dispatcher`` (the loop only), ``decisions`` (pure: an answer → what to write),
``writer`` (group commit), ``worker_db`` (the worker's one async route to the database) with
``dbthread``, ``config`` (how a worker dispatches), ``clock`` and ``owners``.
May import: ``limits``, ``input`` (token estimates), ``records``, ``errors``. Never httpx or
SQLAlchemy: senders and the store are passed in (the store only named for types).
"""
