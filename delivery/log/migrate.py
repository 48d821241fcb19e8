"""Applying the Alembic migrations in ``migrations/`` to a delivery log."""

from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from delivery._layout import require
from delivery.errors import ConfigurationError


def alembic_config(url: str) -> Config:
    # Our own ``migrations``, not another project's that comes first on sys.path: Alembic
    # would run its env.py against the log. (Its __init__ imports nothing, not even us.)
    try:
        package = require("migrations")
    except ModuleNotFoundError:
        raise ConfigurationError(
            "the `migrations` package is not installed beside `delivery`"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from None
    # ``require`` found its marker in its __init__.py: a regular package, with a file.
    location = Path(cast(str, package.__file__)).parent
    config = Config()
    config.set_main_option("script_location", str(location))
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
