"""The one censorship rule on names, and how a database URL is shown to people.

It sits below the settings table (:mod:`revstore.config`) because URL
parsing errors are reported with the URL masked before any setting exists,
and the rule on names also covers what the table cannot list: a URL's query
parameters and the settings of a newer revstore in an older one's app config.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url

#: A setting, or a URL's query parameter, whose name ends like this can carry
#: a credential.  It is a rule on names, not a list of settings, so a setting
#: added later is censored the day it is added, whatever its table entry says.
_SECRET_NAME = r"(?:url|uri|dsn|token|password|passwd|secret|key|credentials?)"
_SECRET_NAME_RE = re.compile(_SECRET_NAME + r"$", re.IGNORECASE)
#: Of those, the ones that hold a URL: shown with the password masked, since
#: the host and database are what an operator checks.
_URL_NAME_RE = re.compile(r"(?:url|uri|dsn)$", re.IGNORECASE)
#: What a censored secret that is not a URL shows (Celery's own mask).
MASK = "********"
#: ``user:password@`` (in a URL SQLAlchemy cannot parse) and query parameters named like secrets.
_USERINFO_RE = re.compile(r"//([^:/@]*):[^@]*@")
_QUERY_SECRET_RE = re.compile(r"([?&;][^=&;#]*" + _SECRET_NAME + r"=)[^&;#]*", re.IGNORECASE)


def named_like_secret(name: str) -> bool:
    """Whether ``name`` ends like the name of something that can carry a credential."""
    return bool(_SECRET_NAME_RE.search(name))


def named_like_url(name: str) -> bool:
    """Whether ``name`` ends like the name of a URL (shown masked rather than hidden)."""
    return bool(_URL_NAME_RE.search(name))


def mask_url(url: str | URL | None) -> str:
    """Render a database URL with its password, and query parameters named like secrets, as ``***``.

    libpq and the MySQL drivers take ``?password=`` too, so masking the
    userinfo alone would not do.
    """
    if url is None:
        return "<none>"
    try:
        text = (url if isinstance(url, URL) else make_url(str(url))).render_as_string(hide_password=True)
    except Exception:
        if "://" not in str(url):  # not a URL at all: perhaps a password pasted in the wrong place
            return MASK
        text = _USERINFO_RE.sub(r"//\1:***@", str(url))
    return _QUERY_SECRET_RE.sub(r"\1***", text)
