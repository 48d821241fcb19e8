"""Applying the Alembic migrations in ``migrations/`` to a delivery log.

Alembic (with Mako and Pygments behind it, a tenth of a second to import) is imported only
by what applies or lists migrations; the check every command and worker makes at start
(``is_current``) reads the latest revision from the file names.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Engine, column, inspect, select, table

from delivery._layout import require
from delivery.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config


def migrations_folder() -> Path:
    """Our own ``migrations`` package's folder, not another project's that comes first on
    sys.path: Alembic would run its env.py against the log. (Its __init__ imports nothing,
    not even us.)

    Raises:
        ConfigurationError: the package is not installed beside ``delivery``.
    """
    try:
        package = require("migrations")
    except ModuleNotFoundError:
        raise ConfigurationError(
            "the `migrations` package is not installed beside `delivery`"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from None
    # ``require`` found its marker in its __init__.py: a regular package, with a file.
    return Path(cast(str, package.__file__)).parent


def alembic_config(url: str) -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    # Alembic's config is an INI file underneath; a literal % in a password must be escaped.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

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
    from alembic.script import ScriptDirectory

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
    """The latest migration (one, while the chain has no branches): the revision in the name
    of the last file of ``migrations/versions``, named ``NN_REVISION_title.py`` in chain
    order (tests/delivery/test_migrations.py holds the names to Alembic's own chain)."""
    numbered = [
        path.name.split("_", 2) for path in (migrations_folder() / "versions").glob("[0-9]*_*_*.py")
    ]
    if not numbered:
        return frozenset()
    _, revision, _ = max(numbered, key=lambda parts: int(parts[0]))
    return frozenset({revision})


#: Where Alembic records the migrations applied last (its default, which env.py keeps).
VERSION_TABLE = "alembic_version"


def current(engine: Engine) -> frozenset[str]:
    """The migrations the log records as applied last; empty if it has none. Read as
    Alembic reads them (``MigrationContext.get_current_heads``), without importing it."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return frozenset()
        version = table(VERSION_TABLE, column("version_num"))
        return frozenset(connection.execute(select(version.c.version_num)).scalars())


def is_current(engine: Engine) -> bool:
    """Whether the log's schema is at the latest migration."""
    return current(engine) == heads()


def _single(down_revision: str | Sequence[str] | None) -> str | None:
    # A merge revision names several; this chain has none, so show them joined if one comes.
    if down_revision is None or isinstance(down_revision, str):
        return down_revision
    return ", ".join(down_revision)
