"""Talking to endpoints: where requests go, how they are authenticated, sent, and how the
answers are read.

Holds: ``endpoints`` (built-in endpoints, and their resolution from the config file and the
environment), ``auth`` (the auth-styles registry, secret headers, redaction), ``messages``
(the Messages sender: one request → an ``Outcome`` value), ``http`` (the HTTP plumbing the
senders share: a run's httpx client, the in-process transport, bodies read within a size
cap, the header check), ``aio`` (the transport under httpx that sends on aiohttp, its
failures made httpx's exceptions), ``classify`` (an answer → an ``Outcome`` value),
``ratelimit_headers`` (what a server says about its limits), ``foreign`` (answers in another
API's shape made into Messages), ``streaming`` (when a request is streamed; its events → the
final Message), ``sse`` (the server-sent events format), ``batch_styles`` (the provider batch
API styles registry), ``batch_api`` (the client of a provider's batch API: the batch lane's
HTTP) and ``notify`` (POSTs a run's notifications to a webhook). ``http``, ``messages``,
``batch_api``, ``notify`` and ``aio`` are batchrun's httpx importers; ``aio`` alone imports
aiohttp.
May import: ``limits`` (the dimension registry, ``RateLimits``), ``records``, ``errors``.
"""
