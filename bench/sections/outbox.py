"""11. The transactional outbox: the relay's rate beside a plain ``send_many``.

An application's PostgreSQL database holds N committed outbox rows; the relay (the same
``Relay`` the worker and ``delivery outbox relay`` run, batches of 500) publishes and
deletes them while the application, a process of its own, keeps committing more
(transactions of 10, as fast as it can). The relay's rate is N over the time until those N
were gone; the application's rows come after them (id order) and are relayed afterwards,
not counted. Beside it, in the same run: ``send_many`` of the same N deliveries, straight
to the broker. Both publish to one redis-server, to a queue nobody reads (emptied after
each measurement).
"""

import functools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.context import BenchContext, payload
from bench.report import SectionResult, Spread
from bench.sections.producer import SINK, _empty_sink, _producer_env

TITLE = "11. Transactional outbox: relay rate beside send_many (redis-server, PostgreSQL)"

CHANNEL = "bench-outbox"
ADDRESS = "https://example.invalid/hook"
RELAY = "outbox relay (PostgreSQL → redis), the app writing meanwhile"
SEND_MANY = "delivery.send_many (same deliveries, no outbox)"
#: Rows the application commits per transaction while the relay runs.
APP_TRANSACTION = 10


@dataclass(frozen=True)
class OutboxRun:
    contender: str
    deliveries: int
    seconds: float
    rate: float
    #: Rows the application committed while the relay ran (relayed afterwards).
    written_meanwhile: int = 0


class _Counting:
    """The real publisher, counting the deliveries it published."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher
        self.count = 0

    def publish_envelopes(self, outgoing: Sequence[Any], *, batch: bool = False) -> None:
        self.publisher.publish_envelopes(outgoing, batch=batch)
        self.count += len(outgoing)


def _messages(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"channel": CHANNEL, "address": ADDRESS, "payload": payload(i)}
        for i in range(start, start + count)
    ]


def _fill(engine: Any, count: int) -> int:
    """Commit ``count`` outbox rows (transactions of 500); the highest id."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from delivery.outbox import send_many
    from delivery.outbox.table import TABLE

    for start in range(0, count, 500):
        with Session(engine) as session, session.begin():
            send_many(session, _messages(start, min(500, count - start)))
    with engine.connect() as connection:
        return int(connection.execute(select(func.max(TABLE.c.id))).scalar_one())


#: The application, in a process of its own (as it would be): commits transactions of
#: ``size`` outbox rows until SIGTERM, then prints how many rows it wrote.
_APPLICATION = """
import signal, sys
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from delivery.outbox import send_many

url, channel, address = sys.argv[1:4]
start, size = int(sys.argv[4]), int(sys.argv[5])
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
engine = create_engine(url)
written = 0
print("ready", flush=True)
while not stopped:
    first = start + written
    messages = [
        {"channel": channel, "address": address,
         "payload": {"message": f"Order {i} has shipped", "data": {"order": i}}}
        for i in range(first, first + size)
    ]
    with Session(engine) as session, session.begin():
        send_many(session, messages)
    written += size
print(written, flush=True)
"""


def _relay_run(engine: Any, count: int) -> OutboxRun:
    from sqlalchemy import func, select

    from delivery.outbox import Relay
    from delivery.outbox.table import TABLE
    from delivery.producer import get_publisher

    last = _fill(engine, count)
    publisher = _Counting(get_publisher())
    relay = Relay(engine, publisher)
    url = engine.url.render_as_string(hide_password=False)
    application = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _APPLICATION,
            url,
            CHANNEL,
            ADDRESS,
            str(count),
            str(APP_TRANSACTION),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert application.stdout is not None
    application.stdout.readline()  # ready: it writes from now on
    pending = select(func.count()).select_from(TABLE).where(TABLE.c.id <= last)
    started = time.perf_counter()
    try:
        with engine.connect() as connection:
            while True:
                relay.relay_once()
                if not connection.execute(pending).scalar_one():
                    break
                connection.rollback()  # a fresh snapshot for the next look
        seconds = time.perf_counter() - started
    finally:
        application.send_signal(signal.SIGTERM)
        output, _ = application.communicate(timeout=60)
    relayed = publisher.count
    relay.drain()  # what the application wrote meanwhile: not measured
    written = int(output.split()[-1]) if output.split() else 0
    return OutboxRun(RELAY, relayed, round(seconds, 3), relayed / seconds, written)


def _send_many_run(count: int) -> OutboxRun:
    from delivery import send_many

    messages = _messages(0, count)
    started = time.perf_counter()
    send_many(messages)
    seconds = time.perf_counter() - started
    return OutboxRun(SEND_MANY, count, round(seconds, 3), count / seconds)


def run(ctx: BenchContext) -> SectionResult:
    from sqlalchemy import MetaData, create_engine

    from delivery.outbox import outbox_table
    from delivery.producer import reset_publisher

    count = 100 if ctx.config.smoke else 1000 if ctx.config.quick else 10_000
    runs = 1 if ctx.config.quick else 3
    result = SectionResult(
        "outbox", TITLE, ["contender", "deliveries/s", "vs send_many", "written meanwhile"]
    )
    metadata = MetaData()
    outbox_table(metadata)
    engine = create_engine(ctx.postgres_url("outbox_app"))
    metadata.create_all(engine)
    measured: dict[str, list[OutboxRun]] = {RELAY: [], SEND_MANY: []}
    broker = ctx.redis.url
    try:
        with _producer_env(broker):
            reset_publisher()
            contenders: list[Callable[[], OutboxRun]] = [
                functools.partial(_relay_run, engine, count),
                functools.partial(_send_many_run, count),
            ]
            for measure in contenders:  # warm-up: connections, caches; not measured
                measure()
                _empty_sink(broker)
            for r in range(runs):
                for measure in contenders[r % 2 :] + contenders[: r % 2]:
                    m = measure()
                    _empty_sink(broker)
                    measured[m.contender].append(m)
    finally:
        reset_publisher()
        engine.dispose()
    baseline = measured[SEND_MANY]
    for label, ms in measured.items():
        ratio = Spread.of([m.rate / b.rate for m, b in zip(ms, baseline, strict=True)])
        result.add_row(
            label,
            Spread.of([m.rate for m in ms]).format(0),
            ratio.format(2, "x"),
            Spread.of([float(m.written_meanwhile) for m in ms]).format(0) if label == RELAY else "",
        )
    result.notes += [
        f"N = {count} committed outbox rows per run, {runs} runs, order alternated; the relay "
        f"publishes batches of 500 and deletes them once the broker has them, while the "
        f"application (a process of its own) commits transactions of {APP_TRANSACTION} "
        "outbox rows (written meanwhile: relayed after the N, not counted).",
        f"Both publish to one redis-server, queue {SINK} (nobody consumes); 'vs send_many' is "
        "within each run.",
    ]
    result.data = {"runs": {k: [asdict(m) for m in v] for k, v in measured.items()}}
    return result
