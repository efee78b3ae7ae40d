"""The console's pages and actions, as a Starlette application.

Every read and write goes through :class:`~revstore.store.RevocationStore`
(versioned, notified), and with a Celery app through the client API, which
broadcasts as ``revstore.revoke`` does.  Store calls block, so they run in
Starlette's thread pool and never stall the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
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

from .. import client
from ..config import mask_url
from ..errors import DatabaseUnavailable, InvalidInput, RevstoreError
from ..inputs import parse_expires, parse_name_target, parse_targets, require_expiry, split_pasted
from ..names import decode_where
from ..store import KINDS, RevocationStore, Target, normalize_signal
from .auth import SESSION_COOKIE, SESSION_SECONDS, Credentials, Session, SessionSigner, csrf_ok, same_origin
from .chart import bar_chart
from .fleet import fleet_status

logger = logging.getLogger("revstore.web")

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
#: A pasted list longer than this is refused: one form post should not be a bulk import (use the CLI).
MAX_IDS = 10_000
#: Bytes a form may carry: MAX_IDS ids of Celery's 36 characters fit with room to spare.
MAX_BODY = 1024 * 1024
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
    """State shared by the handlers: the store, the optional Celery app, credentials and sessions."""

    def __init__(self, store: RevocationStore, credentials: Credentials, celery_app: Any = None) -> None:
        self.store = store
        self.credentials = credentials
        self.celery_app = celery_app
        self.signer = SessionSigner()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # ------------------------------------------------------------ plumbing

    def session(self, request: Request) -> Session | None:
        return self.signer.load(request.cookies.get(SESSION_COOKIE))

    def user(self, request: Request, session: Session | None) -> str | None:
        """Who is writing: a logged-in session or valid basic credentials; None when anonymous."""
        if session is not None and session.user:
            return session.user
        return self.credentials.check_basic(request.headers.get("authorization"))

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = self.session(request) or Session()
        context.update(
            request=request,
            csrf=session.csrf,
            user=self.user(request, session),
            writable=self.credentials.writable,
            has_app=self.celery_app is not None,
            database=mask_url(self.store.url),
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        return self.finish(response, session)

    def finish(self, response: Response, session: Session) -> Response:
        response.set_cookie(SESSION_COOKIE, self.signer.dump(session), max_age=SESSION_SECONDS,
                            httponly=True, samesite="strict", secure=False, path="/")
        response.headers.update(SECURITY_HEADERS)
        return response

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "error.html", status=status, message=message)

    async def form(self, request: Request) -> dict[str, str] | Response:
        """The posted form, once size, origin and CSRF token check out; else the refusal page."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return self.error(request, 413, f"revstore: the form is over {MAX_BODY // 1024} KiB; "
                                            f"paste at most {MAX_IDS} ids, or use `revstore revoke`")
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_BODY:
                return self.error(request, 413, f"revstore: the form is over {MAX_BODY // 1024} KiB; "
                                                f"paste at most {MAX_IDS} ids, or use `revstore revoke`")
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
        user = self.user(request, self.session(request))
        if user is None:
            return self.error(request, 401, "revstore: log in to write")
        return user, fields

    # --------------------------------------------------------------- pages

    async def overview(self, request: Request) -> Response:
        data = await run_in_threadpool(self.store.overview)
        return self.render(request, "overview.html", stats=data, chart=bar_chart(data["per_day"]))

    async def revocations(self, request: Request) -> Response:
        q = request.query_params
        filters = {
            "q": q.get("q", "").strip(),
            "kind": q.get("kind") if q.get("kind") in KINDS else "",
            "state": q.get("state") if q.get("state") in ("active", "tombstone", "all") else "active",
            "terminate": q.get("terminate") if q.get("terminate") in ("yes", "no") else "",
            "expiring": q.get("expiring") if q.get("expiring") in ("1", "24", "168") else "",
        }
        after = _decode_cursor(q.get("after"))
        rows = await run_in_threadpool(
            self.store.search,
            filters["q"] or None,
            kind=filters["kind"] or None,
            active={"active": True, "tombstone": False, "all": None}[filters["state"]],
            terminate={"yes": True, "no": False}.get(filters["terminate"]),
            expiring_within=float(filters["expiring"]) * 3600 if filters["expiring"] else None,
            after=after,
            limit=PAGE_SIZE + 1,
        )
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        query = {k: v for k, v in filters.items() if v}
        next_url = "/revocations?" + urlencode({**query, "after": _encode_cursor(rows[-1].page_key())}) if more else None
        first_url = "/revocations?" + urlencode(query) if after is not None else None
        return self.render(request, "revocations.html", rows=rows, filters=filters, kinds=KINDS,
                           next_url=next_url, first_url=first_url, link=_detail_link)

    async def detail(self, request: Request) -> Response:
        q = request.query_params
        target = Target(q.get("kind", "task"), q.get("value", ""), q.get("header", ""))  # type: ignore[arg-type]
        try:
            row = await run_in_threadpool(self.store.get, target)
        except RevstoreError as exc:
            return self.error(request, 400, str(exc))
        if row is None:
            return self.error(request, 404, f"revstore: {target} is not revoked")
        return self.render(request, "detail.html", row=row, link=_detail_link(row.target))

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
        kind = form.get("kind", "task")
        if kind not in KINDS:
            raise InvalidInput(f"revstore: unknown revocation kind {kind!r}")
        if kind == "name":
            return self._revoke_name(form, user)
        items = split_pasted(form.get("ids", ""))
        if not items:
            raise InvalidInput("revstore: nothing to revoke; give task ids or --stamp HEADER=VALUE")
        if len(items) > MAX_IDS:
            raise InvalidInput(f"revstore: {len(items)} ids pasted; at most {MAX_IDS} per form, "
                               "use `revstore revoke` for more")
        targets = parse_targets([] if kind == "stamp" else items, root=kind == "root",
                                stamps=items if kind == "stamp" else ())
        terminate = form.get("terminate") == "on"
        signal = normalize_signal(form.get("signal") or "SIGTERM")
        expires = parse_expires(form.get("expires"))
        reason = form.get("reason") or None
        revoked_by = f"web:{user}"[:255]
        if self.celery_app is None:
            result = self.store.add(targets, terminate=terminate, signal=signal if terminate else None,
                                    expires=expires, reason=reason, revoked_by=revoked_by)
            return (f"revoked {len(targets)} durably ({result.changed} new or changed); "
                    "workers apply it at their next sync")
        values = [t.value for t in targets]
        if kind == "task":
            report = client.revoke(self.celery_app, values, terminate, signal, expires, reason,
                                   store=self.store, revoked_by=revoked_by)
        elif kind == "root":
            report = client.revoke_root(self.celery_app, values, terminate, signal, expires, reason,
                                        store=self.store, revoked_by=revoked_by)
        else:
            headers: dict[str, list[Any]] = {}
            for t in targets:
                headers.setdefault(t.header, []).append(t.stamp_value)
            report = client.revoke_by_stamped_headers(self.celery_app, headers, terminate, signal, expires,
                                                      reason, store=self.store, revoked_by=revoked_by)
        return str(report)

    async def restore(self, request: Request) -> Response:
        return await self._on_target(request, self._restore)

    async def extend(self, request: Request) -> Response:
        return await self._on_target(request, self._extend)

    async def _on_target(self, request: Request, action: Callable[[Target, dict[str, str]], Any]) -> Response:
        """A write action on one revocation from its detail page; back to that page when done."""
        checked = await self.writer(request)
        if isinstance(checked, Response):
            return checked
        _, form = checked
        target = Target(form.get("kind", "task"), form.get("value", ""), form.get("header", ""))  # type: ignore[arg-type]
        try:
            await run_in_threadpool(action, target, form)
        except RevstoreError as exc:
            return self.error(request, 400, str(exc))
        return RedirectResponse(_detail_link(target), status_code=303)

    def _revoke_name(self, form: dict[str, str], user: str) -> str:
        """First line the task name, each further line a ``KEY=VALUE`` argument filter, as the CLI's ``--where``."""
        lines = [line.strip() for line in form.get("ids", "").splitlines() if line.strip()]
        if not lines:
            raise InvalidInput("revstore: nothing to revoke; give a task name")
        target = parse_name_target(lines[0], lines[1:])
        terminate = form.get("terminate") == "on"
        signal = normalize_signal(form.get("signal") or "SIGTERM")
        expires, reason, revoked_by = require_expiry(form.get("expires")), form.get("reason") or None, f"web:{user}"[:255]
        if self.celery_app is None:
            result = self.store.add([target], terminate=terminate, signal=signal if terminate else None,
                                    expires=expires, reason=reason, revoked_by=revoked_by)
            return f"revoked {target} durably ({result.changed} new or changed); workers apply it at their next sync"
        return str(client.revoke_name(self.celery_app, target.header, decode_where(target.value), terminate, signal,
                                      expires, reason, store=self.store, revoked_by=revoked_by))

    def _restore(self, target: Target, form: dict[str, str]) -> None:
        if self.celery_app is not None:
            client.restore(self.celery_app, [target], True, self.store)
        else:
            self.store.remove([target])

    def _extend(self, target: Target, form: dict[str, str]) -> None:
        expires = parse_expires(form.get("expires"))
        if not isinstance(expires, float):
            raise InvalidInput("revstore: extend needs a lifetime such as 12h or 7d")
        self.store.extend([target], expires)

    async def fleet(self, request: Request) -> Response:
        if self.celery_app is None:
            return self.render(request, "fleet.html", workers=None, version=None)
        version, workers = await run_in_threadpool(fleet_status, self.store, self.celery_app)
        return self.render(request, "fleet.html", workers=workers, version=version)

    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        creds = self.credentials
        user = None
        if form.get("token") and creds.check_token(form["token"]):
            user = "token"
        elif form.get("user") and creds.check_basic(_basic(form.get("user", ""), form.get("password", ""))):
            user = form["user"]
        if user is None:
            return self.render(request, "login.html", status=401, error="revstore: wrong token or password")
        # a fresh session (and CSRF token) on login: a token planted before it is worthless after
        response = RedirectResponse("/", status_code=303)
        return self.finish(response, Session(user=user))

    async def logout(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        return self.finish(RedirectResponse("/", status_code=303), Session())


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


def _encode_cursor(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_cursor(text: str | None) -> tuple[str, str, str] | None:
    """The page cursor from the URL; a tampered one just starts from the first page."""
    if not text:
        return None
    try:
        kind, header, value = json.loads(base64.urlsafe_b64decode(text.encode()))
        return str(kind), str(header), str(value)
    except (ValueError, TypeError, binascii.Error):
        return None


def create_app(store: RevocationStore, credentials: Credentials | None = None, celery_app: Any = None) -> Starlette:
    """The console for ``store``; with ``celery_app`` it also broadcasts and shows the fleet."""
    console = Console(store, credentials or Credentials(), celery_app)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RevstoreError):
            return console.error(request, 503 if isinstance(exc, DatabaseUnavailable) else 400, str(exc))
        logger.exception("revstore console: unexpected error on %s", request.url.path)
        return console.error(request, 500, "revstore: internal error; the console's log has the details")

    routes = [
        Route("/", console.overview),
        Route("/revocations", console.revocations),
        Route("/revocation", console.detail),
        Route("/revoke", console.revoke_form, methods=["GET"]),
        Route("/revoke", console.revoke, methods=["POST"]),
        Route("/restore", console.restore, methods=["POST"]),
        Route("/extend", console.extend, methods=["POST"]),
        Route("/fleet", console.fleet),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: on_error})
    app.state.console = console
    return app

