"""The console's pages and actions, as a Starlette application.

Every read and write goes through :class:`~revstore.store.RevocationStore`
(versioned, notified), and with a Celery app through the client API, which
broadcasts as ``revstore.revoke`` does.  Store calls block, so they run in
Starlette's thread pool and never stall the event loop.
"""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..config import mask_url
from ..errors import DatabaseUnavailable, RevstoreError
from ..schema import AUDIT_KEYS
from ..records import Target
from ..schema import KINDS
from ..store import RevocationStore
from . import actions
from .access import CHALLENGE, TOO_LARGE, Caller, Refusal, client_address, read_body
from .api import Api
from .auth import SESSION_COOKIE, SESSION_SECONDS, Credentials, Session, SessionSigner, csrf_ok, same_origin
from .chart import bar_chart, thousands
from .fleet import fleet_status
from .metrics import exposition, metrics_registry
from .ratelimit import FailureLimiter

logger = logging.getLogger("revstore.web")

HERE = Path(__file__).resolve().parent
#: Audit rows a detail page shows, the latest ones (`revstore audit --key` lists every one).
HISTORY_ROWS = 50
SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGHUP")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Console:
    """State shared by the handlers: the store, the optional Celery app, credentials and sessions.

    ``open_reads`` False: pages and /metrics need credentials too (a console
    listening beyond loopback without ``--public-read``).
    """

    def __init__(self, store: RevocationStore, credentials: Credentials, celery_app: Any = None,
                 open_reads: bool = True) -> None:
        self.store = store
        self.credentials = credentials
        self.celery_app = celery_app
        self.open_reads = open_reads
        self.limiter = FailureLimiter()
        self.signer = SessionSigner()
        self.registry = metrics_registry(store, celery_app)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["num"] = thousands

    # ------------------------------------------------------------ plumbing

    def session(self, request: Request) -> Session | None:
        return self.signer.load(request.cookies.get(SESSION_COOKIE))

    def user(self, request: Request, session: Session | None) -> str | None:
        """Who is asking: a logged-in session, the bearer token or valid basic credentials; None when anonymous."""
        if session is not None and session.user:
            return session.user
        header = request.headers.get("authorization")
        return self.credentials.check_bearer(header) or self.credentials.check_basic(header)

    def blocked(self, address: str) -> Refusal | None:
        """429 for an address over the failed-login limit, until its oldest failure is a minute old."""
        wait = self.limiter.retry_after(address)
        if wait is None:
            return None
        return Refusal(429, f"revstore: too many failed logins from {address}; try again in {wait} s",
                       {"Retry-After": str(wait)})

    def caller(self, request: Request) -> Caller:
        """Who sent ``request``, checked once: credentials in its Authorization header, else its session.

        Wrong credentials count as a failed login of the caller's address (so
        basic auth on a page or the API is no way around the login limit),
        and an address over the limit is refused whatever it sends.
        """
        address = client_address(request)
        blocked = self.blocked(address)
        if blocked is not None:
            return Caller(None, False, blocked)
        header = request.headers.get("authorization")
        if header:
            user = self.credentials.check_bearer(header) or self.credentials.check_basic(header)
            if user is None:
                failures = self.limiter.failed(address)
                logger.warning("revstore console: failed login from %s (%d in the last minute; %s credentials)",
                               address, failures, header.split(" ", 1)[0].lower())
                return Caller(None, False, Refusal(401, "revstore: wrong token or password", CHALLENGE))
            return Caller(user, False, None)
        session = self.session(request)
        if session is not None and session.user:
            return Caller(session.user, True, None)
        return Caller(None, False, None)

    def reader(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """``handler`` behind the read rule: open, or for authenticated callers only (see Console)."""
        async def guarded(request: Request) -> Response:
            if not self.open_reads:
                who = self.caller(request)
                refusal = who.refusal or (None if who.user else Refusal(
                    401, "revstore: log in to read: this console is open to the network", CHALLENGE))
                if refusal is not None:
                    response = self.render(request, "error.html", status=refusal.status, login=True,
                                           message=refusal.message)
                    response.headers.update(refusal.headers)
                    return response
            return await handler(request)  # type: ignore[no-any-return]

        return guarded

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = self.session(request) or Session()
        context.update(
            request=request,
            base=base_path(request),
            csrf=session.csrf,
            user=self.user(request, session),
            writable=self.credentials.writable,
            has_app=self.celery_app is not None,
            database=mask_url(self.store.url),
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        return self.finish(request, response, session)

    def finish(self, request: Request, response: Response, session: Session) -> Response:
        """Set the session cookie (``Secure`` when the browser came over HTTPS, seen through a trusted
        proxy's X-Forwarded-Proto) on the console's own path only, and the security headers."""
        response.set_cookie(SESSION_COOKIE, self.signer.dump(session), max_age=SESSION_SECONDS,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path=base_path(request) or "/")
        response.headers.update(SECURITY_HEADERS)
        return response

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "error.html", status=status, message=message)

    async def form(self, request: Request) -> dict[str, str] | Response:
        """The posted form, once size, origin and CSRF token check out; else the refusal page."""
        body = await read_body(request)
        if body is None:
            return self.error(request, 413, TOO_LARGE)
        if not same_origin(request.headers.get("origin"), request.headers.get("host"), request.url.scheme):
            return self.error(request, 403, "revstore: refused: the form was posted from another site")
        try:
            fields = await _parse_form(request, body)
        except ValueError:
            return self.error(request, 400, "revstore: the form could not be read")
        if not csrf_ok(self.session(request), fields.get("csrf")):
            return self.error(request, 403, "revstore: refused: the form's CSRF token is missing or stale; "
                                            "reload the page and try again")
        return fields

    async def writer(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        """For write actions: the checked form and who sent it, or the refusal page."""
        if not self.credentials.writable:
            return self.error(request, 403, "revstore: the console is read-only; set REVSTORE_WEB_TOKEN "
                                            "(or REVSTORE_WEB_USER and REVSTORE_WEB_PASSWORD) to allow writes")
        fields = await self.form(request)
        if isinstance(fields, Response):
            return fields
        who = self.caller(request)
        if who.refusal is not None:
            response = self.error(request, who.refusal.status, who.refusal.message)
            response.headers.update(who.refusal.headers)
            return response
        if who.user is None:
            return self.error(request, 401, "revstore: log in to write")
        return who.user, fields

    # --------------------------------------------------------------- pages

    async def overview(self, request: Request) -> Response:
        data = await run_in_threadpool(self.store.overview)
        return self.render(request, "overview.html", stats=data, chart=bar_chart(data["per_day"]))

    async def revocations(self, request: Request) -> Response:
        q = request.query_params
        filters = actions.filters_from(q)
        rows, cursor = await run_in_threadpool(actions.search, self.store, filters, q.get("after"))
        query = {k: v for k, v in filters.items() if v}
        next_url = "/revocations?" + urlencode({**query, "after": cursor}) if cursor else None
        first_url = "/revocations?" + urlencode(query) if actions.decode_cursor(q.get("after")) is not None else None
        return self.render(request, "revocations.html", rows=rows, filters=filters, kinds=KINDS,
                           next_url=next_url, first_url=first_url, link=_detail_link)

    async def detail(self, request: Request) -> Response:
        try:
            target = actions.target_from(request.query_params)
            row = await run_in_threadpool(self.store.get, target)
        except RevstoreError as exc:
            return self.error(request, 400, str(exc))
        if row is None:
            return self.error(request, 404, f"revstore: {target} is not revoked")
        latest = await run_in_threadpool(functools.partial(
            self.store.audit_history, key=target, newest_first=True, limit=HISTORY_ROWS + 1))
        return self.render(request, "detail.html", row=row, link=_detail_link(row.target),
                           history=latest[:HISTORY_ROWS][::-1], history_cut=len(latest) > HISTORY_ROWS,
                           audit_keys=AUDIT_KEYS)

    async def revoke_form(self, request: Request) -> Response:
        return self.render(request, "revoke.html", signals=SIGNALS, form={}, errors=[])

    async def revoke(self, request: Request) -> Response:
        checked = await self.writer(request)
        if isinstance(checked, Response):
            return checked
        user, form = checked
        try:
            report = await run_in_threadpool(self._revoke, form, user)
        except RevstoreError as exc:
            status = 503 if isinstance(exc, DatabaseUnavailable) else 400
            return self.render(request, "revoke.html", status=status, signals=SIGNALS, form=form, errors=[str(exc)])
        return self.render(request, "revoke.html", signals=SIGNALS, form={}, errors=[], done=report)

    def _revoke(self, form: dict[str, str], user: str) -> str:
        return actions.revoke(self.store, self.celery_app, user, kind=form.get("kind", "task"),
                              ids=form.get("ids", ""), terminate=form.get("terminate") == "on",
                              signal=form.get("signal"), expires=form.get("expires"),
                              reason=form.get("reason") or None)

    async def restore(self, request: Request) -> Response:
        return await self._on_target(request, self._restore)

    async def extend(self, request: Request) -> Response:
        return await self._on_target(request, self._extend)

    async def _on_target(self, request: Request, action: Callable[[Target, dict[str, str], str], Any]) -> Response:
        """A write action on one revocation from its detail page; back to that page when done."""
        checked = await self.writer(request)
        if isinstance(checked, Response):
            return checked
        user, form = checked
        try:
            target = actions.target_from(form)
            await run_in_threadpool(action, target, form, user)
        except RevstoreError as exc:
            return self.error(request, 400, str(exc))
        return RedirectResponse(base_path(request) + _detail_link(target), status_code=303)

    def _restore(self, target: Target, form: dict[str, str], user: str) -> None:
        actions.restore(self.store, self.celery_app, target, user)

    def _extend(self, target: Target, form: dict[str, str], user: str) -> None:
        actions.extend(self.store, target, form.get("expires"), user)

    async def fleet(self, request: Request) -> Response:
        if self.celery_app is None:
            return self.render(request, "fleet.html", workers=None, version=None)
        version, workers = await run_in_threadpool(fleet_status, self.store, self.celery_app)
        return self.render(request, "fleet.html", workers=workers, version=version)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' scrape: the table and, with -A, each worker (see revstore.web.metrics)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await run_in_threadpool(exposition, self.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        address = client_address(request)
        blocked = self.blocked(address)
        if blocked is not None:
            response = self.render(request, "login.html", status=blocked.status, error=blocked.message)
            response.headers.update(blocked.headers)
            return response
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        creds = self.credentials
        user = creds.check_token(form["token"]) if form.get("token") else None
        if user is None and form.get("user"):
            user = creds.check_basic(_basic(form.get("user", ""), form.get("password", "")))
        if user is None:
            failures = self.limiter.failed(address)
            logger.warning("revstore console: failed login from %s (%d in the last minute)", address, failures)
            return self.render(request, "login.html", status=401, error="revstore: wrong token or password")
        # a fresh session (and CSRF token) on login: a token planted before it is worthless after
        response = RedirectResponse(base_path(request) + "/", status_code=303)
        return self.finish(request, response, Session(user=user))

    async def logout(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        return self.finish(request, RedirectResponse(base_path(request) + "/", status_code=303), Session())


def base_path(request: Request) -> str:
    """The sub-path the console is served under (``--root-path``, e.g. /revstore), "" at the root:
    every link, form and redirect starts with it."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _parse_form(request: Request, body: bytes) -> dict[str, str]:
    """URL-encoded form fields (the console's forms send nothing else); the last value of a repeated field wins."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise ValueError("not a form")
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64))


def _detail_link(target: Target) -> str:
    query = {"kind": target.kind, "value": target.value}
    if target.header:
        query["header"] = target.header
    return "/revocation?" + urlencode(query)


def create_app(store: RevocationStore, credentials: Credentials | None = None, celery_app: Any = None,
               open_reads: bool = True) -> Starlette:
    """The console for ``store``; with ``celery_app`` it also broadcasts and shows the fleet.

    ``open_reads`` False: reading needs credentials too (see :func:`revstore.web.serve`).
    """
    console = Console(store, credentials or Credentials(), celery_app, open_reads)
    read = console.reader

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RevstoreError):
            return console.error(request, 503 if isinstance(exc, DatabaseUnavailable) else 400, str(exc))
        logger.exception("revstore console: unexpected error on %s", request.url.path)
        return console.error(request, 500, "revstore: internal error; the console's log has the details")

    routes = [
        *Api(console).routes(),
        Route("/", read(console.overview)),
        Route("/revocations", read(console.revocations)),
        Route("/revocation", read(console.detail)),
        Route("/revoke", read(console.revoke_form), methods=["GET"]),
        Route("/revoke", console.revoke, methods=["POST"]),
        Route("/restore", console.restore, methods=["POST"]),
        Route("/extend", console.extend, methods=["POST"]),
        Route("/fleet", read(console.fleet)),
        Route("/metrics", read(console.metrics)),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: on_error})
    app.state.console = console
    return app

