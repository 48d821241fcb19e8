"""Counts that survive purging: daily roll-ups of deliveries and attempts.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Chain position 14 of 14: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → … → 0013 → 0014.
"""

from collections.abc import Sequence

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
