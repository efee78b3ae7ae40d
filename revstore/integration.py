"""``revstore.install(app)``: the one line that opts an app in."""

from __future__ import annotations

import re
from typing import Any

import click
from celery.app import utils as app_utils

_INSTALLED_ATTR = "_revstore_installed"


def install(app: Any) -> Any:
    """Add the revstore bootstep and the ``--revstore-url`` worker option.

    Idempotent.  The step stays inert until ``revstore_url`` (or
    ``REVSTORE_URL``, or ``--revstore-url``) names a database.  In clients
    with ``revstore_url`` set, the stock ``app.control.revoke`` (hence
    ``AsyncResult.revoke``) also writes the table before broadcasting.
    """
    if getattr(app, _INSTALLED_ATTR, False):
        return app
    from .bootstep import Revstore
    from .client import patch_control

    app.steps["consumer"].add(Revstore)
    app.user_options["worker"].add(
        click.Option(
            ["--revstore-url"],
            default=None,
            help="revstore database URL (overrides the revstore_url setting).",
        )
    )
    patch_control(app)
    censor_setting()
    setattr(app, _INSTALLED_ATTR, True)
    return app


def censor_setting() -> None:
    """Hide ``revstore_url`` in ``celery inspect conf`` and ``celery report``.

    Celery censors settings whose names match ``HIDDEN_SETTINGS``; our URL
    may carry a password but its name matches none of the patterns, so add it.
    """
    hidden = app_utils.HIDDEN_SETTINGS
    if "REVSTORE_URL" not in hidden.pattern.upper():
        app_utils.HIDDEN_SETTINGS = re.compile(hidden.pattern + "|REVSTORE_URL", hidden.flags)
