"""Erasure: the keyed hash that keeps an erased address suppressed.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Chain position 15 of 15: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0014 → 0015.
"""

from collections.abc import Sequence

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
