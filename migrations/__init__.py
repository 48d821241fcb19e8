"""Alembic migrations for the delivery log (applied by ``delivery db upgrade``)."""

#: This is delivery's own package, not another of the same name (delivery/_layout.py).
__delivery_layout__ = True
