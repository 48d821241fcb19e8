"""HTTP keys own their deliveries; test keys (issue 27).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Chain position 10 of 11: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009 → 0010 → 0011.
"""

from collections.abc import Sequence

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
