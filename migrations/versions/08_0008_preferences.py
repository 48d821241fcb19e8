"""Recipients' preferences, time zones and quiet hours; unsubscribes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Chain position 8 of 9: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009.
"""

from collections.abc import Sequence

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
