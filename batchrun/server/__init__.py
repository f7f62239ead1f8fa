"""``batchrun serve``: Anthropic's Message Batches API over the job store, a dashboard, and
Prometheus metrics.

Holds: ``keys`` (server keys, tenants, dashboard sessions), ``errors`` (Anthropic's error
bodies), ``bodies`` (a create body read as request lines, streaming), ``service`` (the
store calls behind each route, off the event loop), ``api`` (the ``/v1/messages/batches``
routes), ``workers`` (dispatch inside the server), ``dashboard`` and ``metrics`` (with
``scrape``, ``serve``'s ``/metrics`` route, and ``routes``, which mounts both), ``app``
(the ASGI app that puts them together), ``hosts`` (the Host names served and trusted for
``results_url``, against DNS rebinding), ``connections`` (uvicorn's h11 protocol with header
and body deadlines and a connection cap, against slowloris), ``running`` (start it with
uvicorn); and ``run_metrics``, the ``/metrics`` server of
``batchrun run --metrics-port`` (the standard library's HTTP server, no FastAPI).
May import: ``batchrun.client`` and everything below it; FastAPI and Starlette are imported
here only. Nothing below imports this package.
"""
