"""The migrations build the schema the models describe on PostgreSQL too."""

import pytest

from tests.delivery.test_migrations import differences
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.integration


def test_a_fresh_database_at_head_matches_the_models(postgres_server: PostgresServer) -> None:
    assert differences(postgres_server.create_database("models")) == []
