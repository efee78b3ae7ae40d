"""Plumbing shared by the pages and the API: who a request comes from, and its body within bounds."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .actions import MAX_IDS

#: Bytes a form or an API call may carry: MAX_IDS ids of Celery's 36 characters fit with room to spare.
MAX_BODY = 1024 * 1024

#: The challenge of a 401: scripts and Prometheus send the token as a bearer header.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="revstore"'}


@dataclass(frozen=True)
class Refusal:
    """Why a request is turned away: status, the one-line message, and headers (Retry-After, a challenge)."""

    status: int
    message: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Caller:
    """Who a request comes from; ``by_cookie``: only its session cookie says so (a write then needs its CSRF token)."""

    user: str | None
    by_cookie: bool
    refusal: Refusal | None


#: What a request over MAX_BODY is told (a form or an API call).
TOO_LARGE = (f"revstore: the request is over {MAX_BODY // 1024} KiB; send at most {MAX_IDS} ids, "
             "or use `revstore revoke`")


async def read_body(request: Request) -> bytes | None:
    """The request's body, or None once it is over MAX_BODY (read no further: a huge post costs nothing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        return None
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY:
            return None
    return body


def client_address(request: Request) -> str:
    """The caller's address: the peer's, or what a trusted proxy forwarded (uvicorn's proxy headers)."""
    return request.client.host if request.client is not None else "unknown"
