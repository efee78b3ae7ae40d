"""Revocation by task name, optionally narrowed by arguments: the ``name`` kind.

A name rule is stored in the one revocations table like every other kind:
``kind='name'``, ``header`` = the task name, ``value`` = the canonical JSON
of its ``where`` (sorted keys, no spaces), so revoking or restoring the same
(name, where) always hits the same row.  ``{}`` is "every task of that name".

A ``where`` maps keyword argument names to values (a subset of the task's
kwargs must be equal) and positions (``int`` keys) to values (``args[i]``
must be equal).  Values are JSON values compared exactly, JSON type included:
``42`` matches neither ``42.0``, ``"42"`` nor ``True``, since a task's
arguments arrive JSON-decoded and a rule that matched loosely would stop work
nobody meant to stop.

Stored, ``where`` becomes ``{"args": {"0": ...}, "kwargs": {...}}`` with empty
parts left out: JSON object keys are strings, and a kwarg may be named "0".
Revstore 0.1.0 and 0.2.0 workers know no ``name`` kind and take such a row for
a stamp (header = task name, value = the decoded object): no task carries a
stamped header named like a task with an object value, so they apply nothing,
and the value always parses as JSON (a long one is stored by digest as a JSON
string), so they never fail on it (see docs/design.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput

#: The stored ``where`` of a rule without arguments: every task of the name.
EVERYTHING = "{}"


def _exact(value: Any) -> str:
    """A JSON value's identity for comparison: 1, 1.0, true and "1" all differ."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same(actual: Any, stored: str) -> bool:
    """Whether a task's argument is the rule's value; an argument JSON cannot hold (pickle) never is."""
    try:
        return _exact(actual) == stored
    except (TypeError, ValueError):
        return False


def encode_where(where: Mapping[Any, Any] | None) -> str:
    """The canonical stored form of ``where``; InvalidInput if it cannot be one."""
    if where is None:
        return EVERYTHING
    if not isinstance(where, Mapping):
        raise InvalidInput(f"revstore: where must be a dict of argument names or positions, not {type(where).__name__}")
    args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    for key, value in where.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise InvalidInput(f"revstore: where key {key!r:.40} must be a keyword name or a position (int)")
        if isinstance(key, int):
            if key < 0:
                raise InvalidInput(f"revstore: where position {key} must not be negative")
            args[str(key)] = value
        elif not key:
            raise InvalidInput("revstore: where key must not be empty")
        else:
            kwargs[key] = value
    stored = {k: v for k, v in (("args", args), ("kwargs", kwargs)) if v}
    try:
        return json.dumps(stored, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidInput(f"revstore: where {where!r:.60} holds a value that is not JSON") from None


def decode_where(stored: str) -> dict[Any, Any]:
    """The ``where`` a stored value stands for: int keys for positions."""
    try:
        data = json.loads(stored)
        args, kwargs = data.get("args", {}), data.get("kwargs", {})
        return {**{int(k): v for k, v in args.items()}, **kwargs}
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"revstore: {stored[:60]!r} is not a stored where (build it with Target.name)") from None


def describe(name: str, stored: str) -> str:
    """``billing.charge_card(0='eu', customer_id=42)``: how the CLI and console show a rule."""
    where = decode_where(stored)
    parts = [f"{k}={_exact(v)}" for k, v in sorted(where.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0])))]
    return f"{name}({', '.join(parts)})"


def parse_where(items: Iterable[str]) -> dict[Any, Any]:
    """``KEY=VALUE`` items as the CLI and console take them: a digit KEY is a position.

    VALUE is read as JSON when it is JSON (``42``, ``true``, ``"42"``), else
    as a string (``eu``), so the common cases need no quoting.
    """
    where: dict[Any, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"revstore: --where {item!r} must look like KEY=VALUE (e.g. customer_id=42 or 0=eu)")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        where[int(key) if key.isdigit() else key] = value
    return where


@dataclass(frozen=True)
class Rule:
    """One stored ``where``, ready to test a task's arguments against."""

    #: (position, exact JSON) pairs
    args: tuple[tuple[int, str], ...]
    #: (keyword, exact JSON) pairs
    kwargs: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, stored: str) -> Rule:
        data = json.loads(stored)
        return cls(tuple(sorted((int(k), _exact(v)) for k, v in data.get("args", {}).items())),
                   tuple(sorted((k, _exact(v)) for k, v in data.get("kwargs", {}).items())))

    def matches(self, args: Any, kwargs: Any) -> bool:
        """Whether a task called with ``args`` and ``kwargs`` falls under this rule."""
        if self.args:
            if not isinstance(args, (list, tuple)):
                return False
            for position, value in self.args:
                if position >= len(args) or not _same(args[position], value):
                    return False
        if self.kwargs:
            if not isinstance(kwargs, Mapping):
                return False
            for key, value in self.kwargs:
                if key not in kwargs or not _same(kwargs[key], value):
                    return False
        return True
