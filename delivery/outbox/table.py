"""The ``delivery_outbox`` table, declared on the application's own metadata."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: The table's name in the application's database.
OUTBOX_TABLE = "delivery_outbox"


def outbox_table(metadata: MetaData) -> Table:
    """Add ``delivery_outbox`` to the application's ``metadata`` (once) and return it.

    The application's own Alembic creates it (``alembic revision --autogenerate``): the
    table belongs to the application's database, beside the rows whose commit it follows.

    Columns: ``id`` rises with every insert, and the relay publishes in its order — the
    nearest to commit order a database offers (a transaction that took its id earlier can
    commit later; the relay never skips it, as it reads whichever rows are present, not
    those past a mark). ``delivery_id`` is the id ``send`` returned; ``envelope`` the task
    message as JSON, exactly as ``delivery.send`` publishes it; ``countdown`` the seconds it
    waits in the broker, counted from ``created_at``.
    """
    existing = metadata.tables.get(
        f"{metadata.schema}.{OUTBOX_TABLE}" if metadata.schema else OUTBOX_TABLE
    )
    if existing is not None:
        return existing
    return Table(
        OUTBOX_TABLE,
        metadata,
        # BIGINT with an identity on PostgreSQL; SQLite's rowid wants INTEGER exactly.
        Column(
            "id",
            BigInteger().with_variant(Integer, "sqlite"),
            Identity(),
            primary_key=True,
        ),
        Column("delivery_id", String(64), nullable=False),
        Column("envelope", Text, nullable=False),
        Column("countdown", Float, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


#: The table as ``send`` and the relay address it, whatever metadata the app declared it on.
TABLE = outbox_table(MetaData())
