"""Preferences on PostgreSQL: the upsert, the row lock and the batch look-up."""

import threading

import pytest

from delivery.log.database import get_engine
from delivery.log.migrate import upgrade
from delivery.recipients import Preferences, QuietHours
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.integration


def test_changes_at_once_to_one_address_are_all_kept(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("preferences")
    upgrade(url)
    preferences = Preferences(get_engine(url))
    # Given twenty writers turning one category off each for the same new address at once
    barrier = threading.Barrier(20)

    def turn_off(i: int) -> None:
        barrier.wait()
        Preferences(get_engine(url)).set_rule(
            "Ann@Example.com", channel=None, category=f"c{i}", enabled=False
        )

    threads = [threading.Thread(target=turn_off, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    preferences.set_quiet("ann@example.com", QuietHours.parse("22:00-07:00"), timezone="Asia/Tokyo")
    # Then every rule is there, and one look-up finds them under any spelling
    found = preferences.lookup(["ann@example.com", "ANN@example.com", "bob@example.com"])
    assert set(found) == {"ann@example.com", "ANN@example.com"}
    assert len(found["ann@example.com"].rules) == 20
    assert found["ann@example.com"].refuses(channel="email", category="c7")
    assert found["ann@example.com"].timezone == "Asia/Tokyo"
