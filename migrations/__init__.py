"""Alembic migrations for the delivery log (applied by ``delivery db upgrade``)."""
