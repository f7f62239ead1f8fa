"""Talking to endpoints: where requests go, how they are authenticated, sent, and how the
answers are read.

Holds: ``endpoints`` (built-in endpoints, and their resolution from the config file and the
environment), ``auth`` (the auth-styles registry, secret headers, redaction), ``client`` (the
HTTP client: the only module of batchrun that imports httpx), ``classify`` (an answer →
an ``Outcome`` value), ``ratelimit_headers`` (what a server says about its limits),
``streaming`` (when a request is streamed; its events → the final Message), ``sse`` (the
server-sent events format).
May import: ``limits`` (the dimension registry, ``RateLimits``), ``records``, ``errors``.
"""
