"""``revstore.install(app)``: the one line that opts an app in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from celery.app import utils as app_utils

from .config import censor

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
    censor_settings()
    setattr(app, _INSTALLED_ATTR, True)
    return app


def censor_settings() -> None:
    """Show revstore's settings in ``celery inspect conf`` and ``celery report`` as
    :func:`revstore.config.censor` decides.

    Celery censors by its own name patterns and masks only its broker and
    backend URLs: ``revstore_url`` and ``revstore_listen_url`` match none of
    them.  ``Settings.table`` (behind ``humanize``, ``inspect conf`` and
    ``report``) looks the filter up in its module at each call, so wrapping it
    there covers every app in the process.  Celery's own settings keep
    Celery's treatment.
    """
    celery_filter = app_utils.filter_hidden_settings
    if getattr(celery_filter, _INSTALLED_ATTR, False):
        return

    def filter_hidden_settings(conf: Mapping[Any, Any]) -> dict[Any, Any]:
        return {key: censor(key, value) if isinstance(key, str) and key.lower().startswith("revstore_") else value
                for key, value in celery_filter(conf).items()}

    setattr(filter_hidden_settings, _INSTALLED_ATTR, True)
    app_utils.filter_hidden_settings = filter_hidden_settings
