"""Settings: Celery-style names, env fallbacks, validation with one-line errors."""

from __future__ import annotations

import pytest

from revstore import config
from revstore.errors import ConfigurationError


def test_resolution_order_is_argument_then_celery_then_env() -> None:
    env = {"REVSTORE_URL": "sqlite:///env.db", "REVSTORE_SYNC_INTERVAL": "9"}
    assert str(config.load_settings(environ=env).url) == "sqlite:///env.db"
    conf = {"revstore_url": "sqlite:///conf.db"}
    s = config.load_settings(conf=conf, environ=env)
    assert str(s.url) == "sqlite:///conf.db" and s.sync_interval == 9.0 and s.sync_interval_explicit
    s = config.load_settings(conf=conf, environ=env, revstore_url="sqlite:///arg.db")
    assert str(s.url) == "sqlite:///arg.db"


def test_defaults_and_relaxed_poll_while_listening() -> None:
    s = config.load_settings(environ={})
    assert not s.enabled and s.default_expires == 7 * 86400 and s.table_prefix == "revstore_"
    assert s.poll_interval(listening=False) == 5.0 and s.poll_interval(listening=True) == 30.0
    s = config.load_settings(environ={"REVSTORE_SYNC_INTERVAL": "2"})
    assert s.poll_interval(listening=True) == 2.0  # set explicitly: kept


def test_postgres_urls_use_psycopg3() -> None:
    for raw in ("postgres://u@h/db", "postgresql://u@h/db"):
        assert config.normalize_url(raw).drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"revstore_url": "::nonsense::"}, "cannot parse database URL"),
        ({"revstore_url": "mongodb://h/db"}, "unsupported database"),
        ({"revstore_sync_interval": "fast"}, "revstore_sync_interval"),
        ({"revstore_sync_interval": "0"}, ">= 0.05"),
        ({"revstore_default_expires": "-1"}, "revstore_default_expires"),
        ({"revstore_start_without_db": "maybe"}, "boolean"),
        ({"revstore_table_prefix": "drop table;"}, "revstore_table_prefix"),
        ({"revstore_table_prefix": ""}, "not empty"),
        ({"revstore_url": "sqlite:///x.db", "revstore_schema": "s"}, "PostgreSQL"),
    ],
)
def test_bad_settings_raise_one_line(settings: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config.load_settings(conf=settings, environ={})
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_masking_never_shows_the_password() -> None:
    assert config.mask_url("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    assert "s3cret" not in config.mask_url("postgresql://u:s3cret@h:notaport/db")
    assert "s3cret" not in repr(config.load_settings(environ={"REVSTORE_URL": "postgresql://u:s3cret@h/db"}))


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("never", None)])
def test_durations(text: str, seconds: float | None) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("entry", config.TABLE, ids=lambda e: e.name)
def test_each_table_entry_is_what_load_settings_does(entry: config.Entry, tmp_path) -> None:
    """The table's default and lowest value (what the docs show) are the resolver's, by variable and by setting."""
    env = {"XDG_STATE_HOME": str(tmp_path)}
    default = entry.default_for(env) if entry.default_for else entry.default
    assert getattr(config.load_settings(environ=env), entry.attribute) == default
    assert config.ENV[entry.name] == entry.env == entry.name.upper() and entry.name.startswith("revstore_")
    if entry.minimum is None:
        return
    lowest = entry.minimum
    assert getattr(config.load_settings(environ={**env, entry.env: str(lowest)}), entry.attribute) == lowest
    below = lowest - (0.01 if isinstance(lowest, float) else 1)
    with pytest.raises(ConfigurationError) as info:
        config.load_settings(conf={entry.name: str(below)}, environ=env)
    assert entry.name in str(info.value) and "\n" not in str(info.value)
    if entry.none_word is not None:
        assert getattr(config.load_settings(environ={**env, entry.env: entry.none_word}), entry.attribute) is None
