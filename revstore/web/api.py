"""The console's JSON API under ``/api/``: what the pages do, for scripts.

Each endpoint calls the same :mod:`revstore.web.actions` function as its
page.  Authentication is the token as ``Authorization: Bearer …`` or HTTP
basic credentials; a browser's session cookie works too, but a write it
authorizes must carry the session's CSRF token in ``X-CSRF-Token`` (a
cookie is sent by the browser on its own, so it alone proves nothing).
Writes take ``application/json`` only: another site cannot send that
without a CORS preflight, which this API never grants.  Failed credentials
count towards the same per-address limit as failed logins.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import DatabaseUnavailable, InvalidInput, RevstoreError
from . import actions
from .access import CHALLENGE, TOO_LARGE, read_body
from .auth import csrf_ok, same_origin

if TYPE_CHECKING:
    from .app import Console

logger = logging.getLogger("revstore.web")

#: Rows a search may return at once.
MAX_LIMIT = 500

Handler = Callable[[Any, Request], Awaitable[Response]]


#: Answers are never cached and never sniffed as anything but JSON.
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={**HEADERS, **(headers or {})})


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error as the API reports it: ``{"error": one line}``."""
    return reply({"error": message}, status, headers)


def _errors_as_json(handler: Handler) -> Handler:
    """Input and database errors as JSON with the CLI's one-line messages, never a page or a traceback."""
    @functools.wraps(handler)
    async def wrapped(self: Any, request: Request) -> Response:
        try:
            return await handler(self, request)
        except RevstoreError as exc:
            return problem(503 if isinstance(exc, DatabaseUnavailable) else 400, str(exc))
        except Exception:
            logger.exception("revstore console: unexpected error on %s", request.url.path)
            return problem(500, "revstore: internal error; the console's log has the details")

    return wrapped


WriteHandler = Callable[[Any, str, dict[str, Any]], Awaitable[Response]]


def _write_endpoint(handler: WriteHandler) -> Handler:
    """A write runs only for an authorized caller with a JSON object body (``Api._write`` says
    which), and gets who writes and that body; its errors are JSON like every endpoint's."""
    @functools.wraps(handler)
    async def checked(self: Any, request: Request) -> Response:
        allowed = await self._write(request)
        if isinstance(allowed, Response):
            return allowed
        return await handler(self, *allowed)

    return _errors_as_json(checked)


class Api:
    """The endpoints, sharing the console's store, credentials, limiter and sessions."""

    def __init__(self, console: Console) -> None:
        self.console = console

    # ------------------------------------------------------------ access

    def _may_read(self, request: Request) -> Response | None:
        who = self.console.caller(request)
        if who.refusal is not None:
            return problem(who.refusal.status, who.refusal.message, who.refusal.headers)
        if who.user is None and not self.console.open_reads:
            return problem(401, "revstore: this console needs credentials to read (a bearer token or basic auth)",
                           CHALLENGE)
        return None

    async def _write(self, request: Request) -> tuple[str, dict[str, Any]] | Response:
        """Who writes and the JSON body, or the refusal."""
        console = self.console
        if not console.credentials.writable:
            return problem(403, "revstore: the console is read-only; set REVSTORE_WEB_TOKEN "
                                "(or REVSTORE_WEB_USER and REVSTORE_WEB_PASSWORD) to allow writes")
        who = console.caller(request)
        if who.refusal is not None:
            return problem(who.refusal.status, who.refusal.message, who.refusal.headers)
        user = who.user
        if user is None:
            return problem(401, "revstore: send the token as 'Authorization: Bearer TOKEN', or basic credentials",
                           CHALLENGE)
        if who.by_cookie and not csrf_ok(console.session(request), request.headers.get("x-csrf-token")):
            return problem(403, "revstore: refused: a write by session cookie needs the session's X-CSRF-Token header")
        if not same_origin(request.headers.get("origin"), request.headers.get("host"), request.url.scheme):
            return problem(403, "revstore: refused: the request came from another site")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return problem(415, "revstore: send the body as JSON (Content-Type: application/json)")
        body = await read_body(request)
        if body is None:
            return problem(413, TOO_LARGE)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return problem(400, "revstore: the body is not valid JSON")
        if not isinstance(data, dict):
            return problem(400, "revstore: the body must be a JSON object")
        return user, data

    # --------------------------------------------------------- endpoints

    @_errors_as_json
    async def search(self, request: Request) -> Response:
        refusal = self._may_read(request)
        if refusal is not None:
            return refusal
        q = request.query_params
        try:
            limit = min(MAX_LIMIT, max(1, int(q.get("limit") or actions.PAGE_SIZE)))
        except ValueError:
            raise InvalidInput(f"revstore: limit must be a number from 1 to {MAX_LIMIT}") from None
        rows, cursor = await run_in_threadpool(actions.search, self.console.store, actions.filters_from(q),
                                               q.get("after"), limit)
        return reply({"items": [r.as_dict() for r in rows], "next": cursor})

    @_errors_as_json
    async def show(self, request: Request) -> Response:
        refusal = self._may_read(request)
        if refusal is not None:
            return refusal
        target = actions.target_from(request.query_params)
        row = await run_in_threadpool(self.console.store.get, target)
        if row is None:
            return problem(404, f"revstore: {target} is not revoked")
        return reply(row.as_dict())

    @_errors_as_json
    async def fleet(self, request: Request) -> Response:
        refusal = self._may_read(request)
        if refusal is not None:
            return refusal
        from .fleet import fleet_status

        console = self.console
        if console.celery_app is None:
            return problem(404, "revstore: the fleet needs the Celery app: start the console with -A")
        version, workers = await run_in_threadpool(fleet_status, console.store, console.celery_app)
        return reply({"version": version, "workers": workers})

    @_write_endpoint
    async def revoke(self, user: str, body: dict[str, Any]) -> Response:
        ids = body.get("ids")
        if not (isinstance(ids, str) or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))):
            raise InvalidInput('revstore: "ids" must be a list of strings (or one pasted string)')
        console = self.console
        message = await run_in_threadpool(
            functools.partial(actions.revoke, console.store, console.celery_app, user,
                              kind=_text(body, "kind") or "task", ids=ids, terminate=_flag(body, "terminate"),
                              signal=_text(body, "signal"), expires=_text(body, "expires"),
                              reason=_text(body, "reason")))
        return reply({"ok": True, "message": message})

    @_write_endpoint
    async def restore(self, user: str, body: dict[str, Any]) -> Response:
        target = actions.target_from(body)
        changed = await run_in_threadpool(actions.restore, self.console.store, self.console.celery_app, target, user)
        return reply({"ok": True, "restored": changed})

    @_write_endpoint
    async def extend(self, user: str, body: dict[str, Any]) -> Response:
        target = actions.target_from(body)
        await run_in_threadpool(actions.extend, self.console.store, target, _text(body, "expires"), user)
        row = await run_in_threadpool(self.console.store.get, target)
        return reply({"ok": True, "revocation": row.as_dict() if row is not None else None})

    def routes(self) -> list[Route]:
        return [
            Route("/api/revocations", self.search, methods=["GET"]),
            Route("/api/revocation", self.show, methods=["GET"]),
            Route("/api/fleet", self.fleet, methods=["GET"]),
            Route("/api/revoke", self.revoke, methods=["POST"]),
            Route("/api/restore", self.restore, methods=["POST"]),
            Route("/api/extend", self.extend, methods=["POST"]),
        ]


def _text(body: dict[str, Any], name: str) -> str | None:
    """An optional text field; a number is taken as its text (``"expires": 3600``)."""
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InvalidInput(f'revstore: "{name}" must be a string')


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f'revstore: "{name}" must be true or false')
    return value
