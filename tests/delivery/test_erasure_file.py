"""On SQLite an erased address and its content leave the file itself (``secure_delete``,
then the write-ahead log emptied), not only the tables: read back the raw bytes."""

from pathlib import Path

from delivery.clock import utcnow
from delivery.engine.assembly import assemble
from delivery.erasure import erase
from delivery.log import AttemptResult, ClaimState, Outcome
from delivery.recipients import Preferences
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret
from tests.support.recording import finish

ADDRESS = "Zebedee.Quill@Example.com"
CONTENT = "CONTENT-7f3a-one-time-code-493817"
#: Forms either would take in the file: as given, lower-cased, JSON-escaped.
NEEDLES = (b"zebedee", b"Zebedee", b"ZEBEDEE", CONTENT.encode(), b"7f3a-one-time")


def _files(database: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in database.parent.iterdir()
        if path.name.startswith(database.name)
    }


def _found(database: Path) -> list[str]:
    return [
        f"{name}: {needle!r}"
        for name, data in _files(database).items()
        for needle in NEEDLES
        if needle in data
    ]


def test_erased_text_is_not_left_in_the_database_file_or_its_wal(
    settings: Settings, tmp_path: Path
) -> None:
    database = tmp_path / "log.sqlite3"
    assembly = assemble(settings)
    assembly.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    log = assembly.log
    # Given deliveries to the address among others', one with a payload large enough to
    # spill onto overflow pages, each with an attempt that quotes it
    for i in range(60):
        address = ADDRESS if i % 3 == 0 else f"other-{i}@example.org"
        body = (CONTENT if address == ADDRESS else f"hello {i}") + " pad" * (2000 if i == 3 else 5)
        claim = log.claim(
            Envelope(
                id=f"d{i}",
                channel="hooks",
                address=address,
                payload=Payload(message=body, subject=f"for {address}"),
            ),
            lease=60,
        )
        assert claim.state is ClaimState.CLAIMED
        finish(
            log,
            claim,
            AttemptResult(
                outcome=Outcome.DELIVERED if i % 2 else Outcome.FAILED,
                started_at=utcnow(),
                duration_ms=1.0,
                error=f"550 {address} refused {body[:40]}",
                detail={"echo": body[:100]},
            ),
            dispatcher="webhook",
            worker="w",
        )
    Preferences(log.engine).set_rule(ADDRESS, channel=None, category="news", enabled=False)
    # …copied into the main file too, as a long-running log would have it
    raw = log.engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # outside a transaction
    finally:
        raw.close()
    assert _found(database), "the test must see the text before the erasure"

    # When the address is erased
    counts = erase(assembly, ADDRESS.lower())
    assert counts.deliveries == 20 and counts.preferences == 1

    # Then neither the database file nor its write-ahead log holds the address or the text
    assert _found(database) == []
    # and the others' deliveries are still there, readable
    kept = log.get("d1")
    assert kept is not None and kept.address == "other-1@example.org"
    assembly.close()
