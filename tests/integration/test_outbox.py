"""The transactional outbox against real PostgreSQL, a real redis-server and real workers.

The ledger each test ends with: every committed outbox row is one delivery in the log,
delivered once; nothing rolled back is ever sent; no relay, however it died, made a second
delivery.
"""

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, MetaData, create_engine, func, select
from sqlalchemy.orm import Session

from delivery.outbox import Relay, outbox_table, send
from delivery.producer.publisher import Outgoing, Publisher, get_publisher
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.ledger import ledger
from tests.support.receiver import Receiver
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.integration

metadata = MetaData()
outbox = outbox_table(metadata)


@pytest.fixture
def app_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The application's own PostgreSQL database, its outbox table created."""
    name = "app_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    url = postgres_server.create_database(name)
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def app_engine(app_url: str) -> Iterator[Engine]:
    engine = create_engine(app_url, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def receiver(postgres_stack: Stack) -> Iterator[Receiver]:
    secret = webhook_secret()
    postgres_stack.channels.add("hooks", "webhook", {"secret": secret})
    with Receiver(secret) as receiver:
        yield receiver


class Application:
    """Commits orders with a delivery each, in transactions of ``size``, from a thread;
    every ``rollback_every``-th transaction rolls back instead."""

    def __init__(self, engine: Engine, url: str, *, size: int = 10, rollback_every: int = 5):
        self.engine, self.url = engine, url
        self.size, self.rollback_every = size, rollback_every
        self.committed: list[str] = []
        self.rolled_back: list[str] = []
        self._transactions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, transactions: int) -> None:
        for _ in range(transactions):
            if self._stop.is_set():
                return
            number, self._transactions = self._transactions, self._transactions + 1
            with Session(self.engine) as session:
                ids = [
                    send(session, "hooks", self.url, {"message": f"order {number}.{i}"}).id
                    for i in range(self.size)
                ]
                if self.rollback_every and number % self.rollback_every == self.rollback_every - 1:
                    session.rollback()
                    self.rolled_back += ids
                else:
                    session.commit()
                    self.committed += ids

    def keep_writing(self, transactions: int, pause: float = 0.0) -> None:
        def run() -> None:
            for _ in range(transactions):
                if self._stop.is_set():
                    return
                self.write(1)
                time.sleep(pause)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=120)

    def stop(self) -> None:
        self._stop.set()
        self.wait()


def _outbox_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())


def _queued_ids(redis_url: str, queue: str = "delivery") -> Counter[str]:
    """Every delivery id in the task messages waiting on the Redis queue."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    ids: Counter[str] = Counter()
    for message in raw:
        doc = json.loads(message)
        args, _, _ = json.loads(base64.b64decode(doc["body"]))
        envelopes = args[0] if doc["headers"]["task"] == "delivery.deliver_batch" else args
        ids.update(e["id"] for e in envelopes)
    return ids


def _assert_each_delivered_once(stack: Stack, receiver: Receiver, app: Application) -> None:
    stack.wait_until(app.committed, {"delivered"}, timeout=120)
    result = ledger(stack.log, receiver, app.committed + app.rolled_back)
    assert result.delivered == len(app.committed)
    assert result.unknown == len(app.rolled_back)  # rolled back: never sent, never logged
    assert result.duplicates == 0


def test_a_worker_relays_committed_rows_and_a_rollback_sends_nothing(
    postgres_stack: Stack, receiver: Receiver, app_url: str, app_engine: Engine
) -> None:
    postgres_stack.worker("--concurrency", "4", DELIVERY_OUTBOX_URLS=app_url)
    app = Application(app_engine, receiver.url(), size=3, rollback_every=2)
    app.write(6)
    assert len(app.committed) == 9 and len(app.rolled_back) == 9
    _assert_each_delivered_once(postgres_stack, receiver, app)
    assert _outbox_rows(app_engine) == 0


def test_a_sqlite_application_on_the_embedded_broker_too(
    embedded_stack: Stack, tmp_path: Path
) -> None:
    # The defaults end to end: an application on SQLite, the embedded broker, one worker
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    secret = webhook_secret()
    embedded_stack.channels.add("hooks", "webhook", {"secret": secret})
    try:
        with Receiver(secret) as receiver:
            embedded_stack.worker("--concurrency", "2", DELIVERY_OUTBOX_URLS=url)
            app = Application(engine, receiver.url(), size=3, rollback_every=2)
            app.write(4)
            _assert_each_delivered_once(embedded_stack, receiver, app)
        assert _outbox_rows(engine) == 0
    finally:
        engine.dispose()


class CountingPublisher:
    """The real publisher, counting what passes through it."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.published: Counter[str] = Counter()
        self._lock = threading.Lock()

    def publish_envelopes(self, outgoing: Sequence[Outgoing], *, batch: bool = False) -> None:
        self.publisher.publish_envelopes(outgoing, batch=batch)
        with self._lock:
            self.published.update(envelope.id for envelope, _ in outgoing)


def test_two_relays_on_one_database_publish_each_row_once_while_the_app_writes(
    postgres_stack: Stack, receiver: Receiver, app_engine: Engine
) -> None:
    # Given an application writing 2,000 rows (and rolling back 500 more) as two relays run
    app = Application(app_engine, receiver.url(), size=10, rollback_every=5)
    counting = CountingPublisher(get_publisher())
    stop = threading.Event()
    relays = [
        threading.Thread(
            target=Relay(app_engine, counting, batch=100).run, args=(stop,),
            kwargs={"interval": 0.02},
        )
        for _ in range(2)
    ]  # fmt: skip
    for relay in relays:
        relay.start()
    app.keep_writing(250)
    app.wait()
    deadline = time.monotonic() + 60
    while _outbox_rows(app_engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for relay in relays:
        relay.join(timeout=30)
    # Then each committed row was published exactly once, by one relay or the other
    assert len(app.committed) == 2000
    assert set(counting.published) == set(app.committed)
    assert max(counting.published.values()) == 1
    # And a worker delivers each once
    postgres_stack.worker("--concurrency", "8")
    _assert_each_delivered_once(postgres_stack, receiver, app)


#: Runs ``delivery outbox relay`` and SIGKILLs it at one point: ``published`` (the broker
#: has the batch, its rows are not deleted), ``publishing`` (some of a batch's task messages
#: written), ``deleted`` (rows deleted, the transaction not committed), at the Nth time.
_KILLED_AT = """
import os, signal, sys
from delivery.outbox.relay import Relay
from delivery.producer.publisher import Publisher

point, nth = sys.argv[1], int(sys.argv[2])
calls = [0]

def die_at_nth():
    calls[0] += 1
    if calls[0] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)

delete = Relay._delete
if point == "published":
    def _delete(connection, ids):
        die_at_nth()
        delete(connection, ids)
    Relay._delete = staticmethod(_delete)
elif point == "deleted":
    def _delete(connection, ids):
        delete(connection, ids)
        die_at_nth()
    Relay._delete = staticmethod(_delete)
elif point == "publishing":
    publish = Publisher._send
    def _send(self, producer, task):
        publish(self, producer, task)
        die_at_nth()
    Publisher._send = _send
# The command itself, without loading every other command first (a quicker start).
from delivery.cli import app, outbox
app(["outbox", "relay", *sys.argv[3:]], prog_name="delivery")
"""


def _relay_process(
    stack: Stack, url: str, *args: str, point: str = "", nth: int = 0
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", _KILLED_AT, point or "none", str(nth)]
    return subprocess.Popen(
        [*command, "--database-url", url, "--batch", "50", "--interval", "0.05", *args],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_relay_killed_at_any_point_loses_nothing_and_delivers_nothing_twice(
    postgres_stack: Stack, receiver: Receiver, app_url: str, app_engine: Engine
) -> None:
    app = Application(app_engine, receiver.url(), size=10, rollback_every=5)
    app.write(30)  # 240 committed rows waiting
    app.keep_writing(60, pause=0.02)  # and the application keeps writing throughout
    try:
        for point, nth in (("published", 2), ("publishing", 3), ("deleted", 2)):
            relay = _relay_process(postgres_stack, app_url, point=point, nth=nth)
            output, _ = relay.communicate(timeout=60)
            assert relay.returncode == -signal.SIGKILL, (point, output.decode()[-2000:])
        # And one killed from outside, at whatever moment it has reached once it is relaying
        left = _outbox_rows(app_engine)
        relay = _relay_process(postgres_stack, app_url)
        while _outbox_rows(app_engine) >= left and relay.poll() is None:
            time.sleep(0.01)
        relay.send_signal(signal.SIGKILL)
        relay.wait(timeout=30)
    finally:
        app.stop()
    # Then one relay, left to finish, publishes whatever is left
    relay = _relay_process(postgres_stack, app_url, "--once")
    output, _ = relay.communicate(timeout=120)
    assert relay.returncode == 0, output.decode()[-2000:]
    assert _outbox_rows(app_engine) == 0

    queued = _queued_ids(postgres_stack.env["DELIVERY_BROKER_URL"])
    assert set(queued) == set(app.committed)
    # The relays killed between publishing and deleting published some rows twice...
    assert max(queued.values()) > 1
    # ...and yet the workers deliver each once
    postgres_stack.worker("--concurrency", "8")
    _assert_each_delivered_once(postgres_stack, receiver, app)


def test_the_relay_waits_for_a_database_that_is_away(postgres_stack: Stack) -> None:
    # A database nobody listens on: the relay keeps trying, quietly, and stops on SIGTERM
    url = "postgresql+psycopg://app:s3cr3t-pw@127.0.0.1:1/app"
    relay = _relay_process(postgres_stack, url, "--interval", "0.05")
    assert relay.stdout is not None
    seen = []
    for line in relay.stdout:  # until its first warning: it has started and tried
        seen.append(line.decode())
        if "is away" in seen[-1]:
            break
    time.sleep(1.5)  # several more tries
    assert relay.poll() is None
    relay.send_signal(signal.SIGTERM)
    rest, _ = relay.communicate(timeout=30)
    text = "".join(seen) + rest.decode()
    assert relay.returncode == 0, text
    assert text.count("is away") == 1, text  # said once, not once a try
    assert "s3cr3t-pw" not in text and "app:***@127.0.0.1:1" in text
