"""Applying the Alembic migrations in ``migrations/`` to a delivery log."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect


def alembic_config(url: str) -> Config:
    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Alembic's config is an INI file underneath; a literal % in a password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def is_current(engine: Engine) -> bool:
    """Whether the log has been created (the tables exist)."""
    return inspect(engine).has_table("deliveries")
