"""The dashboard's routes: the page, its sign-in, and the JSON API it polls.

GET  /dashboard                    the page (the sign-in form, 401, without a session)
GET  /dashboard/static/{name}      its script and style sheet
POST /dashboard/login              form field ``token``: sets the session cookie (303)
POST /dashboard/logout             clears it
GET  /dashboard/api/live           calls in progress with their transcripts (``?since=V``:
                                   ``{"version": V, "unchanged": true}`` if nothing moved)
GET  /dashboard/api/calls          recent calls (``persona``, ``since``, ``until``, ``limit``)
GET  /dashboard/api/calls/{id}     one call with its turns, tools and waterfall bars
GET  /dashboard/api/stages         p50/p95 per stage over the last hour

Thin routes: :class:`~voxline.server.dashboard_auth.AdminAuth` decides who may
look, :class:`~voxline.server.live_calls.LiveCalls` holds the live view and
:class:`~voxline.server.dashboard_calls.CallSearch` reads the call records. With
``VOXLINE_ADMIN_TOKEN`` unset every route here answers 404. The page is plain
HTML, CSS and JavaScript from the package (no CDN, no build step) and sends a
strict Content-Security-Policy: no inline script, nothing from elsewhere.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from loguru import logger
from pydantic import ValidationError

from voxline.server.dashboard_auth import COOKIE, COOKIE_PATH, SESSION_SECS, AdminAuth, is_https
from voxline.server.dashboard_calls import CallSearch, SearchError, SearchQuery
from voxline.server.live_calls import STATS_WINDOW_SECS, LiveCalls

if TYPE_CHECKING:
    from voxline.bot.runtime import Runtime
    from voxline.records.store import RecordStore

STATIC = files("voxline.server") / "dashboard_static"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_ID_CHARS = 64


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _page(name: str, status: int = 200) -> HTMLResponse:
    html = (STATIC / name).read_text(encoding="utf-8")
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def mount_dashboard(app: FastAPI, runtime: Runtime) -> LiveCalls:
    """Serve the dashboard on ``app``, fed by ``runtime``'s call hub; returns its live view."""
    live = LiveCalls()
    runtime.calls.add_listener(live)

    def records() -> RecordStore | None:
        writer = getattr(app.state, "records", None)  # serve sets it once records are open
        return getattr(writer, "store", None)

    add_dashboard_routes(app, live, CallSearch(live, records))
    return live


def add_dashboard_routes(
    app: FastAPI, live: LiveCalls, calls: CallSearch, auth: AdminAuth | None = None
) -> AdminAuth:
    """Mount the dashboard on ``app``; returns the :class:`AdminAuth` it uses."""
    auth = auth or AdminAuth()
    if auth.enabled:
        logger.info("dashboard on /dashboard (VOXLINE_ADMIN_TOKEN is set)")
    else:
        logger.info(f"dashboard off: {auth.problem}")

    def not_found() -> JSONResponse:
        return _json({"error": "not found"}, 404)

    def refused(request: Request) -> JSONResponse | None:
        """None when the request may read the API, else the refusal (404, 401 or 429)."""
        if not auth.enabled:
            return not_found()
        address = _client(request)
        if not auth.may_try(address):
            return _json({"error": "too many wrong tokens; wait a minute"}, 429)
        if auth.allows(request):
            return None
        if request.headers.get("authorization"):
            auth.failed(address)
        headers = {"WWW-Authenticate": 'Bearer realm="voxline dashboard"'}
        return _json({"error": "a valid admin token is required"}, 401, headers)

    @app.get("/dashboard", include_in_schema=False)
    @app.get("/dashboard/", include_in_schema=False)
    async def page(request: Request) -> Response:
        if not auth.enabled:
            return not_found()
        if refused(request) is None:
            return _page("index.html")
        return _page("login.html", 401)

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if not auth.enabled or name not in ASSETS:
            return not_found()
        body = (STATIC / name).read_bytes()
        return Response(body, media_type=ASSETS[name], headers=SECURITY_HEADERS)

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not auth.enabled:
            return not_found()
        address = _client(request)
        if not auth.may_try(address):
            return _page("login.html", 429)
        try:
            form = await request.form(max_files=0, max_fields=8)
        except Exception:  # python-multipart's and starlette's parse errors
            return _page("login.html", 400)
        token = form.get("token")
        if not isinstance(token, str) or not auth.token_matches(token):
            auth.failed(address)
            logger.warning(f"dashboard sign-in refused for {address}: wrong token")
            return _page("login.html", 401)
        response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            auth.session_cookie(),
            max_age=SESSION_SECS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=is_https(request),
        )
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    async def logout() -> Response:
        if not auth.enabled:
            return not_found()
        response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    @app.get("/dashboard/api/live", include_in_schema=False)
    async def live_calls(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        since = request.query_params.get("since", "")
        if since.isdigit() and int(since) == live.version:
            return _json({"version": live.version, "unchanged": True})
        calls = [call.model_dump(mode="json") for call in live.live()]
        return _json({"version": live.version, "calls": calls})

    @app.get("/dashboard/api/stages", include_in_schema=False)
    async def stages(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        stats = [stat.model_dump() for stat in live.stage_stats()]
        return _json({"window_secs": STATS_WINDOW_SECS, "stages": stats})

    @app.get("/dashboard/api/calls", include_in_schema=False)
    async def recent_calls(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            query = SearchQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "query"
            return _json({"error": f"{where}: {first['msg']}"}, 400)
        try:
            found = await calls.recent(query)
        except SearchError as exc:
            return _json({"error": str(exc)}, exc.status)
        listed = [call.model_dump(mode="json") for call in found]
        return _json({"source": calls.source, "calls": listed})

    @app.get("/dashboard/api/calls/{call_id}", include_in_schema=False)
    async def one_call(request: Request, call_id: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if not call_id or len(call_id) > MAX_ID_CHARS or not call_id.isascii():
            return _json({"error": "no such call"}, 404)
        try:
            call = await calls.one(call_id)
        except SearchError as exc:
            return _json({"error": str(exc)}, exc.status)
        if call is None:
            return _json({"error": "no such call"}, 404)
        return _json(call.model_dump(mode="json"))

    return auth
