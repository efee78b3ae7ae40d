"""What every ``revstore`` command shares: the top-level group, its options and the one-line errors.

Every command resolves the database the same way (``--url``, then the Celery
app's ``revstore_url`` with ``-A``, then ``REVSTORE_URL``) and turns every
user error into one line on stderr and a non-zero exit, never a traceback;
both live here so the command modules only say what each command does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from .. import config as _config
from ..errors import ConfigurationError, RevstoreError
from ..store import RevocationStore

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """Printed as the bare one-line message (exit 1)."""

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


def user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RevstoreError as exc:
            raise UserError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise UserError(f"revstore: the input is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except SQLAlchemyError as exc:
            line = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise UserError(f"revstore: database error: {_config.mask_url(line[0]) if line else type(exc).__name__}") from None

    return wrapper  # type: ignore[return-value]


class Context:
    """What the group's options resolve to, built lazily per command."""

    def __init__(self, url: str | None, app_name: str | None, schema: str | None, prefix: str | None, app: Any) -> None:
        self._url, self._app_name, self._schema, self._prefix, self._app = url, app_name, schema, prefix, app
        self._store: RevocationStore | None = None

    @property
    def app(self) -> Any:
        if self._app is None and self._app_name:
            from celery.app.utils import find_app

            try:
                self._app = find_app(self._app_name)
            except Exception as exc:
                raise ConfigurationError(f"revstore: cannot load Celery app {self._app_name!r}: {exc}") from None
        return self._app

    def settings(self) -> _config.Settings:
        app = self.app
        return _config.load_settings(
            conf=app.conf if app is not None else None,
            revstore_url=self._url,
            revstore_schema=self._schema,
            revstore_table_prefix=self._prefix,
        )

    def override(self, url: str | None, app_name: str | None, schema: str | None, prefix: str | None) -> None:
        """Options given after the subcommand win over the same options given before it."""
        if app_name is not None:
            self._app_name, self._app = app_name, None
        self._url = url if url is not None else self._url
        self._schema = schema if schema is not None else self._schema
        self._prefix = prefix if prefix is not None else self._prefix
        self._store = None

    @property
    def store(self) -> RevocationStore:
        if self._store is None:
            settings = self.settings()
            if settings.url is None:
                raise ConfigurationError(
                    "revstore: no database URL; pass --url, set REVSTORE_URL, or give -A an app with revstore_url"
                )
            self._store = RevocationStore.from_settings(settings)
        return self._store


pass_ctx = click.make_pass_decorator(Context)

#: The options every command takes, before or after its name: (flags, parameter name, help).
COMMON_OPTIONS = (
    (("--url",), "url", "Database URL (default: the -A app's revstore_url, then $REVSTORE_URL)."),
    (("-A", "--app"), "app_name", "Celery app to read revstore_url and other settings from."),
    (("--schema",), "schema", "PostgreSQL schema holding the tables (default: the app's, then $REVSTORE_SCHEMA)."),
    (("--prefix",), "prefix", "Table name prefix (default: the app's, then $REVSTORE_TABLE_PREFIX, then revstore_)."),
)


def common_options(fn: F) -> F:
    for flags, name, help_ in reversed(COMMON_OPTIONS):
        fn = click.option(*flags, name, help=help_)(fn)
    return fn


def accept_common_options_after(group: click.Group) -> None:
    """Let every subcommand take --url/-A/--schema/--prefix too (``revstore db upgrade --url ...``).

    Applied once to the finished command tree, so commands added later get
    the options without repeating them on each definition.
    """
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_common_options_after(command)
            continue
        names = [f"late_{name}" for _, name, _ in COMMON_OPTIONS]
        for (flags, _, help_), name in zip(COMMON_OPTIONS, names):
            command.params.append(click.Option([*flags, name], help=help_))
        callback = command.callback
        assert callback is not None

        @functools.wraps(callback)
        def with_overrides(*args: Any, _callback: Callable[..., Any] = callback, _names: list[str] = names,
                           **kwargs: Any) -> Any:
            late = [kwargs.pop(name) for name in _names]
            obj = click.get_current_context().find_object(Context)
            if obj is not None and any(v is not None for v in late):
                obj.override(*late)
            return _callback(*args, **kwargs)

        command.callback = with_overrides


@click.group(name="revstore", context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.pass_context
def main_group(ctx: click.Context, url: str | None, app_name: str | None, schema: str | None, prefix: str | None) -> None:
    """Durable, shared Celery task revocations."""
    parent_app = getattr(ctx.obj, "app", None)  # set when run as `celery -A proj revstore`
    ctx.obj = Context(url, app_name, schema, prefix, parent_app if not app_name else None)
