"""Applying the Alembic migrations in ``migrations/`` to a delivery log."""

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from delivery.errors import ConfigurationError


def alembic_config(url: str) -> Config:
    # Found, not imported: the migrations import ``delivery``, and imports point one way.
    spec = importlib.util.find_spec("migrations")
    if spec is None or spec.origin is None:
        raise ConfigurationError("the `migrations` package is not installed beside `delivery`")
    config = Config()
    config.set_main_option("script_location", str(Path(spec.origin).parent))
    # Alembic's config is an INI file underneath; a literal % in a password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def is_current(engine: Engine) -> bool:
    """Whether the log's schema is at the latest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config("")).get_heads())
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == heads
