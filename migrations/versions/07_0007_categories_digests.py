"""Categories on deliveries and subscriptions; digests (the recipients issue).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Chain position 7 of 9: 0001 → 0002 → 0005 → 0004 → 0003 → 0006 → 0007 → 0008 → 0009.
"""

from collections.abc import Sequence

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
