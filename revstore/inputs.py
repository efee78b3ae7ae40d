"""Operator input turned into revocation targets, one set of rules for the CLI and the console.

The CLI's arguments and the console's form carry the same things (ids, a
workflow-root switch, ``HEADER=VALUE`` stamps, a lifetime such as ``12h``):
parsing them in one place keeps the accepted input and every error message
identical in both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from . import config as _config
from .errors import ConfigurationError
from .names import parse_where
from .records import DEFAULT, Target, as_target


def parse_targets(ids: Iterable[str], root: bool = False, stamps: Iterable[str] = ()) -> list[Target]:
    """Task (or root) ids plus ``HEADER=VALUE`` stamps, each validated as the store will."""
    targets: list[Target] = [as_target(Target.root(i) if root else Target.task(i)) for i in ids]
    for item in stamps:
        header, sep, value = item.partition("=")
        if not sep or not header:
            raise ConfigurationError(f"revstore: --stamp {item!r} must look like HEADER=VALUE")
        targets.append(as_target(Target.stamp(header, value)))
    return targets


def parse_name_target(name: str, where: Iterable[str] = ()) -> Target:
    """A task name plus ``KEY=VALUE`` argument filters (a digit KEY is a position), validated as the store will."""
    return as_target(Target.name(name.strip(), parse_where(where)))


def require_expiry(text: str | None) -> Any:
    """A name rule's lifetime: required, since a rule that never expires stops a service for good."""
    if text is None or not text.strip():
        raise ConfigurationError("revstore: a name revocation stops that work until it expires: "
                                 "give an expiry (--expires 30m, 12h, 7d) or say never (--expires never)")
    return _config.parse_duration(text)


_SEPARATORS = re.compile(r"[\s,]+")


def split_pasted(text: str) -> list[str]:
    """Ids pasted one per line, or separated by spaces or commas, in order, without repeats."""
    return list(dict.fromkeys(part for part in _SEPARATORS.split(text) if part))


def parse_expires(text: str | None) -> Any:
    """A lifetime as the CLI's ``--expires`` takes it; blank means the configured default."""
    if text is None or not text.strip():
        return DEFAULT
    return _config.parse_duration(text)
