"""Who may read and write through the console, and proof that a form came from the console itself.

Writes need credentials an operator configured: a token (typed once into the
login form, then a session cookie; or sent as a bearer token) or HTTP basic
credentials.  Without any, the console is read-only: nothing can write,
whoever asks.  Reads are open while the console listens on loopback only;
listening beyond it, reads need the same credentials unless the operator
says ``--public-read``, and a console without credentials refuses to listen
there at all (:func:`bind_refusal`): revocation reasons and task ids are
not for the whole network.

Every POST must carry the CSRF token of the caller's session, whatever
authenticated it: browsers resend cookies and basic credentials on their own,
so without the token another site could make an operator's browser revoke.
Sessions are signed with a key made at start-up and kept in memory only:
restarting the console logs everyone out, and no secret is stored on disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import config as _config
from ..errors import ConfigurationError

SESSION_COOKIE = "revstore_session"
SESSION_SECONDS = 8 * 3600


#: What a token's label may be: it names the operator in ``revoked_by`` and the audit.
_LABEL = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

#: The label of a token configured without one (what earlier releases wrote as ``web:token``).
UNLABELLED = "token"


def parse_tokens(value: str | None) -> dict[str, str]:
    """``revstore_web_token`` as {label: token}.

    ``alice:tok1,bob:tok2`` gives each operator a token of their own, so the
    audit says who wrote.  A value with no comma that is not ``label:token``
    is one token, labelled ``token``, as before labels existed.  A list that
    does not parse is refused rather than guessed at: a typo must not turn
    two tokens into one nobody knows.
    """
    if not value:
        return {}
    pieces = value.split(",")
    pairs = [piece.strip().partition(":") for piece in pieces]
    labelled = all(sep and _LABEL.match(label) and token for label, sep, token in pairs)
    if not labelled:
        if len(pieces) == 1:
            return {UNLABELLED: value}
        raise ConfigurationError("revstore: revstore_web_token must be one token, or label:token pairs separated "
                                 "by commas (labels: letters, digits, _ . @ -)")
    tokens: dict[str, str] = {}
    for label, _, token in pairs:
        if label in tokens or token in tokens.values():
            raise ConfigurationError(f"revstore: revstore_web_token repeats the label {label!r} or its token; "
                                     "give each label its own token")
        tokens[label] = token
    return tokens


@dataclass(frozen=True)
class Credentials:
    """The write credentials configured for the console; none means read-only.

    ``token`` is ``revstore_web_token`` as configured (see :func:`parse_tokens`).
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None
    tokens: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", parse_tokens(self.token))

    @classmethod
    def from_settings(cls, conf: Mapping[str, Any] | None = None, **explicit: Any) -> Credentials:
        values = {name: _config.setting(f"revstore_web_{name}", conf, explicit=explicit)
                  for name in ("token", "user", "password")}
        return cls(**{k: (str(v) if v not in (None, "") else None) for k, v in values.items()})

    @property
    def writable(self) -> bool:
        return bool(self.tokens) or bool(self.user and self.password)

    def check_token(self, offered: str) -> str | None:
        """The label of the token ``offered``, None if it is none of them.

        Every token is compared, matched or not: the time taken does not tell which one matched.
        """
        found = None
        for label, token in self.tokens.items():
            if _same(offered, token):
                found = label
        return found

    def check_bearer(self, header: str | None) -> str | None:
        """The token's label when ``header`` is ``Bearer <a token>`` (API clients, Prometheus)."""
        if not (self.tokens and header and header[:7].lower() == "bearer "):
            return None
        return self.check_token(header[7:].strip())

    def check_basic(self, header: str | None) -> str | None:
        """The user name when ``header`` is valid HTTP basic auth for the configured user."""
        if not (self.user and self.password and header and header.lower().startswith("basic ")):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # both comparisons always run: the time taken does not tell which one failed
        ok_user, ok_password = _same(user, self.user), _same(password, self.password)
        return user if sep and ok_user and ok_password else None

    def __repr__(self) -> str:  # never show a secret
        return f"Credentials(token={'***' if self.token else None}, user={self.user!r})"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass
class Session:
    """What the signed cookie carries: the CSRF token and, once logged in, who."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    user: str | None = None
    expires: float = field(default_factory=lambda: time.time() + SESSION_SECONDS)


class SessionSigner:
    """Sign and check session cookies with a per-process key (HMAC-SHA256)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def dump(self, session: Session) -> str:
        body = base64.urlsafe_b64encode(json.dumps(
            {"c": session.csrf, "u": session.user, "e": session.expires}).encode()).decode()
        return f"{body}.{self._sign(body)}"

    def load(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None when it is missing, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
            session = Session(csrf=str(data["c"]), user=data["u"], expires=float(data["e"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


def csrf_ok(session: Session | None, offered: Any) -> bool:
    """The form's token matches the session's: the form was served by this console to this browser."""
    return session is not None and isinstance(offered, str) and _same(offered, session.csrf)


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """A browser's ``Origin`` header, when it sends one, must name this console."""
    if origin is None:  # not a browser, or an old one: the CSRF token still has to match
        return True
    return host is not None and origin == f"{scheme}://{host}"


def is_loopback(host: str) -> bool:
    """``host`` (what the console binds to) is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def bind_refusal(host: str, credentials: Credentials) -> str | None:
    """Why the console must not listen on ``host`` (None: it may)."""
    if is_loopback(host) or credentials.writable:
        return None
    return (f"revstore: refusing to listen on {host} without credentials: anyone on the network could read "
            "every revocation; set REVSTORE_WEB_TOKEN (or REVSTORE_WEB_USER and REVSTORE_WEB_PASSWORD), "
            "or keep --host 127.0.0.1")
