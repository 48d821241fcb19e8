"""The transactional outbox: send from inside the application's own database transaction.

An application that commits an order and then calls ``delivery.send`` can die in between
(the customer never hears of the order), or send first and roll back (the customer hears
of an order that does not exist). The outbox closes that gap: ``send`` writes the delivery
into a table of the application's own database, in the application's transaction, and a
relay publishes what was committed and removes it::

    from delivery.outbox import outbox_table, send as outbox_send

    outbox_table(Base.metadata)               # once, where the app's tables are declared
    with Session(engine) as session, session.begin():
        session.add(order)
        outbox_send(session, "orders-email", order.email, {"message": "Confirmed"})

``delivery outbox relay --database-url URL``, or a worker with ``DELIVERY_OUTBOX_URLS``,
publishes the rows. Needs SQLAlchemy (``pip install 'delivery[outbox]'``); ``import
delivery`` alone still does not load it. See ``docs/outbox.md``.
"""

from delivery.extras import MissingExtra

try:
    import sqlalchemy  # noqa: F401 - only to say which extra brings it
except ModuleNotFoundError as exc:  # `pip install delivery` alone: the producer
    raise MissingExtra(
        "delivery.outbox needs SQLAlchemy (no module named 'sqlalchemy'): "
        "pip install 'delivery[outbox]'",
        name=exc.name,
    ) from exc

from delivery.outbox.relay import Relay
from delivery.outbox.table import OUTBOX_TABLE, outbox_table
from delivery.outbox.writer import send, send_many

__all__ = ["OUTBOX_TABLE", "Relay", "outbox_table", "send", "send_many"]
