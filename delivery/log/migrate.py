"""Applying the Alembic migrations in ``migrations/`` to a delivery log."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
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


@dataclass(frozen=True, slots=True)
class Revision:
    """One migration: its id (what a database records), what it revises and its title."""

    id: str
    down_revision: str | None
    #: The first paragraph of its docstring, on one line.
    title: str


def history() -> list[Revision]:
    """Every migration, oldest first (the order ``upgrade`` applies them in)."""
    scripts = ScriptDirectory.from_config(alembic_config(""))
    return [
        Revision(
            id=script.revision,
            down_revision=_single(script.down_revision),
            title=" ".join(script.doc.split()),
        )
        for script in reversed(list(scripts.walk_revisions()))
    ]


def heads() -> frozenset[str]:
    """The latest migration (one, while the chain has no branches)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


def current(engine: Engine) -> frozenset[str]:
    """The migrations the log records as applied last; empty if it has none."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return frozenset(MigrationContext.configure(connection).get_current_heads())


def is_current(engine: Engine) -> bool:
    """Whether the log's schema is at the latest migration."""
    return current(engine) == heads()


def _single(down_revision: str | Sequence[str] | None) -> str | None:
    # A merge revision names several; this chain has none, so show them joined if one comes.
    if down_revision is None or isinstance(down_revision, str):
        return down_revision
    return ", ".join(down_revision)
