"""The dashboard: ``GET /`` lists the signed-in key's batches (progress, state, counts, cost,
throughput against the binding rate limit, error types) and ``GET /batches/{id}`` shows
one batch over time (requests and tokens per minute against its limits, the latest
errors). Both pages refresh themselves every two seconds.

The pages are static files of this package (``static/``): HTML, CSS, and JavaScript that
fetches its data as JSON from ``/dashboard/api/...`` and draws it, every value set as text
(never as markup: batch names and error messages come from users and servers) and the
charts as SVG of its own. Nothing is loaded from elsewhere (no CDN, no web fonts), and a
Content-Security-Policy holds the pages to that: scripts and styles from this server only,
none inline.

Signing in: the login form posts a key to ``POST /login``, which sets a session cookie
(HttpOnly, SameSite=Strict, Secure over https) holding the key's id and a MAC made with the
key (:meth:`ServerKeys.session_for`), never the key. Scripts may send the key itself
instead (``x-api-key`` or ``Authorization: Bearer``). Without server keys
(``--insecure-no-auth``) everyone sees the batches made without a key. Another key's batch
is answered as an unknown one (404).

The pages poll, and on a large batch the reads behind them take a fraction of a second
(see :class:`~batchrun.ops.views.dashboard.DashboardData`). So each answer is computed once for
everyone asking meanwhile and kept for at least MIN_KEEP_S, or KEEP_PER_COST times as long
as it took: however many pages are open, the dashboard keeps the store threads busy a fifth
of the time at most. The ``now`` of an answer says when it was computed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from batchrun.ops.views.dashboard import DashboardData
from batchrun.server.errors import ApiError
from batchrun.server.keys import SESSION_COOKIE, ServerKeys, presented_key
from batchrun.server.service import BatchService

# Scripts, styles, images and data from this server only; no inline script or style, no
# framing, forms post here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # Same-origin: the browser then names this origin in a form post's Origin header.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
# The static files served, by name, with their media types; nothing else is read.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "batch.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGES = ("index.html", "batch.html", "login.html")
HTML = "text/html; charset=utf-8"
STATIC_PREFIX = "/dashboard/static"
API_PREFIX = "/dashboard/api"
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 200
# A login form is a key and a path; anything longer is not one.
MAX_FORM_BYTES = 4096
# Where a login may send the browser back to: the list, or one batch's page.
_NEXT = re.compile(r"/(batches/msgbatch_[A-Za-z0-9]{1,100})?")
_BATCH_ID = re.compile(r"msgbatch_[A-Za-z0-9]{1,100}")
# The login page's placeholders, replaced by fixed text or a checked path (never by input).
_MESSAGE_SLOT = '<p id="login-message" class="message" hidden></p>'
_NEXT_SLOT = '<input type="hidden" name="next" value="/">'
WRONG_KEY_MESSAGE = "That key is not one of this server's keys."
BatchId = Annotated[str, Path(description="a message batch id (msgbatch_...)")]
# A page's data is computed at most once per this long, however many pages poll it...
MIN_KEEP_S = 1.0
# ...and kept this many times as long as computing it took, so that a large batch on a slow
# database costs the server a fifth of its time at most, whatever number of pages are open.
KEEP_PER_COST = 5.0
# Past this many kept answers, the expired ones are dropped.
MAX_KEPT = 1000


@dataclass(frozen=True)
class _Viewer:
    """Who is looking: the key id whose batches are shown (None without keys)."""

    owner: str | None


class _WrongKey(Exception):
    """A request presented a key that is not one of the server's."""


class _Kept:
    """Data answers by key, computed once for every asker meanwhile and kept a while (see
    KEEP_PER_COST), read from the event loop only."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str | None, ...], tuple[float, bytes]] = {}
        self._computing: dict[tuple[str | None, ...], asyncio.Future[bytes]] = {}

    async def get(
        self, key: tuple[str | None, ...], compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        loop = asyncio.get_running_loop()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > loop.time():
            return kept[1]
        computing = self._computing.get(key)
        if computing is not None:
            return await asyncio.shield(computing)
        future: asyncio.Future[bytes] = loop.create_future()
        self._computing[key] = future
        started = loop.time()
        try:
            body = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: no "never retrieved" warning
            raise
        finally:
            del self._computing[key]
        future.set_result(body)
        now = loop.time()
        if len(self._kept) >= MAX_KEPT:
            self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        self._kept[key] = (now + max(MIN_KEEP_S, KEEP_PER_COST * (now - started)), body)
        return body


def _static_files() -> dict[str, bytes]:
    """The pages and assets, read once from the package."""
    folder = resources.files("batchrun.server") / "static"
    return {name: (folder / name).read_bytes() for name in (*PAGES, *ASSETS)}


class Dashboard:
    """The dashboard's routes, bound to one service and one set of keys."""

    def __init__(self, service: BatchService, keys: ServerKeys) -> None:
        self.service = service
        self.keys = keys
        self.files = _static_files()
        self.data = DashboardData(service.store, known=service.known, prices=service.prices)
        self._kept = _Kept()
        self.router = APIRouter(include_in_schema=False)
        self._pages()
        self._data()

    # -- who is looking -------------------------------------------------------------------

    def viewer(self, request: Request) -> _Viewer | None:
        """The viewer of ``request``: by the key it presents (``_WrongKey`` for one that is
        not the server's), else by its session cookie; None when not signed in."""
        if not self.keys.required:
            return _Viewer(None)
        key = presented_key(request.headers)
        if key is not None:
            owner = self.keys.owner_of(key)
            if owner is None:
                raise _WrongKey
            return _Viewer(owner)
        session = request.cookies.get(SESSION_COOKIE)
        owner = self.keys.owner_of_session(session) if session else None
        return None if owner is None else _Viewer(owner)

    def data_viewer(self, request: Request) -> _Viewer:
        """The viewer of a data request; 401 when not signed in."""
        try:
            viewer = self.viewer(request)
        except _WrongKey:
            raise ApiError(401, "invalid x-api-key") from None
        if viewer is None:
            raise ApiError(401, "sign in at / first, or send your key in the x-api-key header")
        return viewer

    # -- pages ----------------------------------------------------------------------------

    def page(self, name: str, *, status: int = 200) -> Response:
        return _secured(Response(self.files[name], status_code=status, media_type=HTML))

    def login_page(self, *, next_path: str = "/", wrong_key: bool = False) -> Response:
        """The login form; after a wrong key, with a message (401)."""
        page = self.files["login.html"].decode()
        if wrong_key:
            page = page.replace(
                _MESSAGE_SLOT,
                f'<p id="login-message" class="message error">{WRONG_KEY_MESSAGE}</p>',
            )
        if next_path != "/" and _NEXT.fullmatch(next_path):
            page = page.replace(_NEXT_SLOT, _NEXT_SLOT.replace('value="/"', f'value="{next_path}"'))
        return _secured(
            Response(page.encode(), status_code=401 if wrong_key else 200, media_type=HTML)
        )

    def _pages(self) -> None:
        router = self.router

        @router.get("/")
        async def index(request: Request) -> Response:
            try:
                viewer = self.viewer(request)
            except _WrongKey:
                return self.login_page(wrong_key=True)
            return self.login_page() if viewer is None else self.page("index.html")

        @router.get("/batches/{batch_id}")
        async def batch_page(request: Request, batch_id: BatchId) -> Response:
            try:
                viewer = self.viewer(request)
            except _WrongKey:
                return self.login_page(wrong_key=True)
            if viewer is None:
                path = f"/batches/{batch_id}" if _BATCH_ID.fullmatch(batch_id) else "/"
                return self.login_page(next_path=path)
            try:
                await self._batch(viewer, batch_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # The page says so itself when its data request gets the same 404.
                return self.page("batch.html", status=404)
            return self.page("batch.html")

        @router.post("/login")
        async def login(request: Request) -> Response:
            _same_origin(request)
            form = await _form(request)
            next_path = form.get("next", "/")
            if not _NEXT.fullmatch(next_path):
                next_path = "/"
            if not self.keys.required:
                return _secured(RedirectResponse(next_path, status_code=303))
            owner = self.keys.owner_of(form.get("key", "").strip())
            if owner is None:
                return self.login_page(next_path=next_path, wrong_key=True)
            response = _secured(RedirectResponse(next_path, status_code=303))
            response.set_cookie(
                SESSION_COOKIE,
                self.keys.session_for(owner),
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            _same_origin(request)
            response = _secured(RedirectResponse("/", status_code=303))
            response.delete_cookie(
                SESSION_COOKIE,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response

        @router.get(STATIC_PREFIX + "/{name}")
        async def asset(name: str) -> Response:
            media_type = ASSETS.get(name)
            if media_type is None:
                raise ApiError(404, f"no dashboard file {name[:80]!r}")
            response = Response(self.files[name], media_type=media_type)
            response.headers["cache-control"] = "no-cache"
            return _secured(response, cache=False)

    # -- data -----------------------------------------------------------------------------

    async def _batch(self, viewer: _Viewer, batch_id: str) -> None:
        """404 unless ``batch_id`` is one of the viewer's batches."""
        if not _BATCH_ID.fullmatch(batch_id):
            raise ApiError(404, f"no message batch {batch_id[:80]!r}")
        await self.service.get(viewer.owner, batch_id)

    def _data(self) -> None:
        router = self.router

        @router.get(API_PREFIX + "/batches")
        async def batches(
            request: Request,
            limit: Annotated[int, Query(description="batches, newest first")] = (
                DEFAULT_LIST_LIMIT
            ),
        ) -> Response:
            viewer = self.data_viewer(request)
            if not 1 <= limit <= MAX_LIST_LIMIT:
                raise ApiError(400, f"limit: must be from 1 to {MAX_LIST_LIMIT}, not {limit}")
            owner = viewer.owner

            async def compute() -> bytes:
                page, more = await self.service.page(
                    owner, limit=limit, before_id=None, after_id=None
                )
                now = datetime.now(UTC)
                cards = await self.service.call(self.data.cards, page, now=now)
                body = {
                    "batches": [card.as_json() for card in cards],
                    "has_more": more,
                    "auth_required": self.keys.required,
                    "now": now,
                }
                return orjson.dumps(body)

            return _json(await self._kept.get(("list", owner, str(limit)), compute))

        @router.get(API_PREFIX + "/batches/{batch_id}")
        async def batch(request: Request, batch_id: BatchId) -> Response:
            viewer = self.data_viewer(request)
            if not _BATCH_ID.fullmatch(batch_id):
                raise ApiError(404, f"no message batch {batch_id[:80]!r}")
            summary = await self.service.get(viewer.owner, batch_id)

            async def compute() -> bytes:
                now = datetime.now(UTC)
                timeline = await self.service.call(self.data.timeline, summary, now=now)
                body = timeline.as_json(now)
                body["auth_required"] = self.keys.required
                return orjson.dumps(body)

            # The owner was checked above; the batch's data is the same for every viewer.
            return _json(await self._kept.get(("batch", batch_id), compute))


def dashboard_router(service: BatchService, keys: ServerKeys) -> APIRouter:
    """The dashboard's pages, data and files for ``service``, to holders of ``keys``."""
    return Dashboard(service, keys).router


def _json(body: bytes) -> Response:
    return _secured(Response(body, media_type="application/json"))


def _secured(response: Response, *, cache: bool = False) -> Response:
    """``response`` with the dashboard's security headers; not stored by caches (the pages
    show one key's batches) unless ``cache``."""
    for name, value in _HEADERS.items():
        response.headers[name] = value
    if not cache and "cache-control" not in response.headers:
        response.headers["cache-control"] = "no-store"
    return response


def _same_origin(request: Request) -> None:
    """403 for a form posted from another site (a browser says where from in ``Origin``);
    the host is compared, not the scheme, which a proxy in front may change."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    if (
        origin == "null"
        or urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    ):
        raise ApiError(403, "this form may only be posted from the dashboard's own pages")


async def _form(request: Request) -> dict[str, str]:
    """The fields of an url-encoded form, first value each; 413 past MAX_FORM_BYTES."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ApiError(413, f"a login form is at most {MAX_FORM_BYTES} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if values}
