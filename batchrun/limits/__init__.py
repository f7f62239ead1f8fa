"""Pacing: the rate-limit dimensions, token buckets, where their levels live, and the
limiter that reserves before a send and reconciles with the answer's usage.

Holds: ``dimensions`` (the registry every part of batchrun reads, and ``RateLimits``),
``families`` (which limits entry a model falls under: its own, a family pattern's, "*"),
``buckets`` (pure bucket arithmetic), ``keyrecord`` (what workers share about a key: buckets,
pause, announced and learned limits, the ramp; pure), ``banks`` (records in memory or shared
through the database), ``blocks`` (capacity a worker takes in blocks and spends locally;
pure), ``limiter``, ``learning`` (calibrated estimates; what the server's ``-remaining``
headers show it took), ``windows`` (recent values).
May import: ``batchrun.records`` and ``batchrun.errors`` only; the database is reached
through an object passed in (``banks.SharedBuckets``).
"""
