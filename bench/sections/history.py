"""12. A log that runs for years: each read path and the end-to-end rate on a young log
and on a full one, side by side, and purging the full one while sending goes on.

One PostgreSQL log (a throwaway cluster), one redis-server, one ``delivery worker`` and one
``uvicorn delivery.api:app`` process (an admin key, so listings read every delivery):

1. The young log: ``young`` deliveries made 40 days ago, seeded through the store
   (``bench.seeding.seed``: claimed and finished in batches, as a worker records them; one
   in 50 failed). Each read path is timed ``requests`` times; then the end-to-end rate
   (``send_many`` of N webhook deliveries to the bench's receiver, timed from resuming the
   paused worker to the last ``delivered_at``, as sections 1 and 7 do); then the purge
   ``delivery db purge --older-than 30`` runs (``Retention.purge``, in a process of its
   own) removes the 1,000.
2. The full log: ``--history-size`` deliveries (default a million) made 40 days ago and
   earlier, a template seeded through the store and copied by PostgreSQL
   (``bench.seeding.copy_deliveries``), then ``VACUUM ANALYZE`` as autovacuum would have
   done on a log that grew over months. The same reads, the same end-to-end runs.
3. The same purge removes the million while end-to-end runs follow one another beside
   it; the runs that ended before the purge did give the rate while purging, beside the
   full log's rate without a purge.

The workers' own daily purge is off (``DELIVERY_RETENTION_DAYS=0``: they only compact the
counts), so that nothing but the bench's purge removes deliveries, and when it says.
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests

from bench.context import BenchContext, payload
from bench.processes import free_port, wait_for_port
from bench.report import SectionResult, Spread, median
from bench.stack import ROOT, DeliveryStack, Worker, delivery_stack

TITLE = "12. A log that runs for years: young log and full log side by side (PostgreSQL)"

#: The seeded deliveries' channel (a configured one, so ``/metrics`` names it).
SEEDED = "history-seeded"
#: How old the seeded deliveries are: past the retention the purge is given.
AGE = timedelta(days=40)
RETENTION_DAYS = 30
#: Deliveries listed per page (the API's and ``delivery log``'s default).
PAGE = 50


@dataclass(frozen=True)
class Plan:
    """How big this section's runs are."""

    young: int
    size: int
    #: Deliveries seeded through the store for the full log; PostgreSQL copies the rest.
    template: int
    deliveries: int
    runs: int
    requests: int

    @classmethod
    def of(cls, ctx: BenchContext) -> "Plan":
        size = ctx.config.history_size
        if ctx.config.smoke:
            return cls(
                young=50, size=size, template=min(100, size), deliveries=50, runs=1, requests=2
            )
        if ctx.config.quick:
            return cls(
                young=200, size=size, template=min(500, size), deliveries=200, runs=1, requests=5
            )
        return cls(
            young=1000, size=size, template=min(2000, size), deliveries=2000, runs=3, requests=30
        )


@dataclass(frozen=True)
class Probe:
    """A delivery in the middle of the log (newest first): what the reads ask for."""

    id: str
    created_at: datetime

    @property
    def cursor(self) -> str:
        # The listing's cursor as the service makes it (``delivery.api.deliveries``):
        # the (created_at, id) of the last delivery of the page before, base64 JSON.
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class E2ERun:
    deliveries: int
    seconds: float
    rate: float
    #: perf_counter when the run's worker was resumed and when its last delivery was seen.
    began: float
    ended: float


@dataclass
class Phase:
    """One log's figures: milliseconds per read, and the end-to-end runs."""

    deliveries: int
    reads: dict[str, list[float]] = field(default_factory=dict)
    runs: list[E2ERun] = field(default_factory=list)
    purge_seconds: float = 0.0
    purged: int = 0


class _Api:
    """``uvicorn delivery.api:app`` on the stack's log and broker, with an admin key."""

    def __init__(self, ctx: BenchContext, stack: DeliveryStack) -> None:
        from delivery.api.keys import KeyStore

        _, key = KeyStore(stack.log.engine).add("bench-history", admin=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**stack.env, "DELIVERY_API_RATE_LIMIT": "0"}
        self.child = ctx.processes.start(
            "history-api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "delivery.api:app",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            log_path=ctx.workdir / "history-api.log",
            env=env,
            cwd=ROOT,
        )
        wait_for_port(self.port, timeout=60, alive=self.child.alive)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **params: str) -> Any:
        response = self.session.get(self.url + path, params=params, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json() if path != "/metrics" else response.text

    def close(self) -> None:
        self.session.close()
        self.child.stop()


def _timed(call: Callable[[], object], times: int) -> list[float]:
    """Milliseconds per call, ``times`` calls after two not counted (connections, caches)."""
    for _ in range(2):
        call()
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


#: The read paths, in the table's order.
GET_ONE = "GET /v1/deliveries/{id}"
LIST_FIRST = "GET /v1/deliveries (first page)"
LIST_NEXT = "GET /v1/deliveries?cursor= (second page)"
LIST_MIDDLE = "GET /v1/deliveries?cursor= (page from the middle of the log)"
LIST_FAILED = "GET /v1/deliveries?status=failed"
METRICS = "GET /metrics"
CLI_LOG = "delivery log (find + short ids)"
CLI_STATUS = "delivery status ID"
CLI_PREFIX = "delivery status PREFIX (8 characters)"
READS = (
    GET_ONE,
    LIST_FIRST,
    LIST_NEXT,
    LIST_MIDDLE,
    LIST_FAILED,
    METRICS,
    CLI_LOG,
    CLI_STATUS,
    CLI_PREFIX,
)


def _reads(api: _Api, stack: DeliveryStack, probe: Probe, times: int) -> dict[str, list[float]]:
    from delivery.cli.deliveries import _resolve

    log = stack.log
    limit = str(PAGE)
    second = api.get("/v1/deliveries", limit=limit)["next_cursor"]

    def cli_log() -> None:
        # What ``delivery log`` reads at a terminal narrower than 140 columns (wider, it
        # shows whole ids and skips the short ones).
        records = log.find(limit=PAGE)
        log.short_ids([r.id for r in records])

    def cli_prefix() -> None:
        resolved = _resolve(log, probe.id[:8])
        if resolved != probe.id or log.get(resolved) is None:
            raise RuntimeError(f"{probe.id[:8]} resolved to {resolved}")

    calls: dict[str, Callable[[], object]] = {
        GET_ONE: lambda: api.get(f"/v1/deliveries/{probe.id}"),
        LIST_FIRST: lambda: api.get("/v1/deliveries", limit=limit),
        LIST_NEXT: lambda: api.get("/v1/deliveries", limit=limit, cursor=second),
        LIST_MIDDLE: lambda: api.get("/v1/deliveries", limit=limit, cursor=probe.cursor),
        LIST_FAILED: lambda: api.get("/v1/deliveries", limit=limit, status="failed"),
        METRICS: lambda: api.get("/metrics"),
        CLI_LOG: cli_log,
        CLI_STATUS: lambda: log.get(probe.id),
        CLI_PREFIX: cli_prefix,
    }
    return {name: _timed(calls[name], times) for name in READS}


def _probe(stack: DeliveryStack) -> Probe:
    """The delivery halfway down the listing (newest first): found once, not timed."""
    from sqlalchemy import func, select

    from delivery.log.tables import DeliveryRow

    d = DeliveryRow
    with stack.log.engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(d)).scalar_one()
        row = connection.execute(
            select(d.id, d.created_at)
            .order_by(d.created_at.desc(), d.id)
            .offset(total // 2)
            .limit(1)
        ).one()
    return Probe(row.id, row.created_at)


def _vacuum(stack: DeliveryStack) -> float:
    started = time.perf_counter()
    with stack.log.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    return time.perf_counter() - started


class _Sender:
    """End-to-end runs: ``send_many`` into the paused worker, resume, wait for the last."""

    def __init__(self, ctx: BenchContext, stack: DeliveryStack, worker: Worker, count: int):
        self.stack, self.worker, self.count = stack, worker, count
        self.url = ctx.receiver.url("/history")
        self.made = 0

    def run(self) -> E2ERun:
        from delivery import send_many

        self.made += 1
        stack, count = self.stack, self.count
        channel = stack.add_channel(f"history-e2e-{self.made}")
        stack.control.pause(self.worker)
        send_many(
            {"channel": channel, "address": self.url, "payload": payload(i)} for i in range(count)
        )
        began, start = time.perf_counter(), time.time()
        stack.control.resume(self.worker)
        stack.wait_delivered(channel, count, timeout=60 + count * 0.05)
        ended = time.perf_counter()
        last = stack.last_delivered_at(channel)
        seconds = (last.timestamp() if last else time.time()) - start
        return E2ERun(count, round(seconds, 3), count / seconds, began, ended)


#: What ``delivery db purge --older-than DAYS --json`` runs (``delivery/cli/retention.py``),
#: in a process of its own, timed from the call to its return rather than from the
#: interpreter's start (some seconds on a busy machine, which would swamp a small purge).
_PURGE = """
import json, sys, time
from delivery.cli.context import delivery_log
from delivery.retention import Retention

retention = Retention(delivery_log().engine)
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
report = retention.purge(older_than=float(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started, **report.to_json()}), flush=True)
"""


class _Purge:
    """The purge ``delivery db purge`` runs, in a subprocess, started on ``go``."""

    def __init__(self, stack: DeliveryStack) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PURGE, str(RETENTION_DAYS)],
            env=stack.env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the purge did not start: {self.process.communicate()[1][-2000:]}")
        self.ended: float | None = None
        self._output: tuple[str, str] = ("", "")
        self._waiter = threading.Thread(target=self._wait, daemon=True)

    def go(self) -> "_Purge":
        self._waiter.start()
        return self

    def _wait(self) -> None:
        self._output = self.process.communicate("go\n")
        self.ended = time.perf_counter()

    def running(self) -> bool:
        return self.ended is None

    def result(self) -> tuple[float, int]:
        """Seconds the purge took and deliveries it purged.

        Raises:
            RuntimeError: the purge failed.
        """
        self._waiter.join()
        out, err = self._output
        if self.process.returncode != 0:
            raise RuntimeError(f"the purge exited {self.process.returncode}: {err[-2000:]}")
        report = json.loads(out)
        return float(report["seconds"]), int(report["deliveries"])


def _seed_young(stack: DeliveryStack, plan: Plan) -> float:
    from bench.seeding import seed
    from delivery.clock import utcnow

    started = time.perf_counter()
    seed(stack.log, plan.young, at=utcnow() - AGE, channel=SEEDED, outcomes=_outcomes())
    return time.perf_counter() - started


def _seed_full(ctx: BenchContext, stack: DeliveryStack, plan: Plan) -> dict[str, float]:
    """``plan.size`` deliveries: a template through the store, PostgreSQL's copies of it
    going back a year, and the counts of the copies; then VACUUM ANALYZE."""
    from bench.seeding import add_counts, copy_deliveries, read_counts, seed
    from delivery.clock import utcnow

    engine = stack.log.engine
    started = time.perf_counter()
    before = read_counts(engine)
    ids = seed(stack.log, plan.template, at=utcnow() - AGE, channel=SEEDED, outcomes=_outcomes())
    stored = time.perf_counter() - started
    copies, rest = divmod(plan.size - plan.template, plan.template)
    step = timedelta(days=365) / max(copies + 1, 1)
    # About 100,000 deliveries a statement: progress to watch, and no transaction too big.
    per_statement = max(1, 100_000 // plan.template)
    made = plan.template
    for first in range(1, copies + 1, per_statement):
        made += copy_deliveries(
            engine, ids, range(first, min(copies + 1, first + per_statement)), step=step
        )
        ctx.console.print(f"  seeded {made:,} of {plan.size:,}", highlight=False)
    if rest:
        made += copy_deliveries(engine, ids[:rest], range(copies + 1, copies + 2), step=step)
    add_counts(engine, before, read_counts(engine), (made - plan.template) / plan.template)
    seeded = time.perf_counter() - started
    vacuum = _vacuum(stack)
    return {"store": stored, "copies": seeded - stored, "seeded": seeded, "vacuum": vacuum}


def _outcomes() -> tuple[Any, ...]:
    from delivery.log.tables import Outcome

    return (Outcome.DELIVERED,) * 49 + (Outcome.FAILED,)


def _measure(api: _Api, stack: DeliveryStack, sender: _Sender, phase: Phase, plan: Plan) -> None:
    phase.reads = _reads(api, stack, _probe(stack), plan.requests)
    phase.runs = [sender.run() for _ in range(plan.runs)]


def _purge_while_sending(stack: DeliveryStack, sender: _Sender) -> tuple[float, int, list[E2ERun]]:
    """Purge with end-to-end runs one after another beside it; the runs that ended before
    the purge did."""
    purge = _Purge(stack).go()
    runs: list[E2ERun] = []
    try:
        while purge.running():
            runs.append(sender.run())
    except BaseException:
        purge.process.kill()  # not a child the run's clean-up knows of
        raise
    seconds, purged = purge.result()
    assert purge.ended is not None
    return seconds, purged, [r for r in runs if r.ended <= purge.ended]


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    plan = Plan.of(ctx)
    young, full = Phase(plan.young), Phase(plan.size)
    load = [os.getloadavg()]
    seeding: dict[str, float] = {}
    with delivery_stack(
        ctx.processes,
        ctx.workdir / "history",
        broker_url=ctx.redis.url,
        database_url=ctx.postgres_url("history"),
        queue="bench-history",
    ) as stack:
        # The workers only compact the counts: nothing purges but the bench, when it says.
        stack.env["DELIVERY_RETENTION_DAYS"] = "0"
        stack.add_channel(SEEDED)
        worker = stack.start_worker("history", cfg.concurrency)
        api = _Api(ctx, stack)
        sender = _Sender(ctx, stack, worker, plan.deliveries)
        try:
            seeding["young"] = _seed_young(stack, plan)
            _vacuum(stack)
            sender.run()  # warm-up: connections, caches; not measured
            _measure(api, stack, sender, young, plan)
            young.purge_seconds, young.purged = _Purge(stack).go().result()
            ctx.console.print(
                f"  young log: seeded {plan.young:,} in {seeding['young']:.1f} s; "
                f"purged {young.purged:,} in {young.purge_seconds:.1f} s",
                highlight=False,
            )
            load.append(os.getloadavg())
            seeding |= _seed_full(ctx, stack, plan)
            ctx.console.print(
                f"  full log: seeded {plan.size:,} in {seeding['seeded']:.1f} s "
                f"({plan.template:,} through the store in {seeding['store']:.1f} s, the rest "
                f"copied in {seeding['copies']:.1f} s); VACUUM ANALYZE {seeding['vacuum']:.1f} s",
                highlight=False,
            )
            _measure(api, stack, sender, full, plan)
            load.append(os.getloadavg())
            full.purge_seconds, full.purged, during = _purge_while_sending(stack, sender)
            load.append(os.getloadavg())
        finally:
            api.close()
            stack.stop_worker(worker)
    return _summarise(plan, young, full, during, seeding, load)


def _ms(values: list[float]) -> str:
    return Spread.of(values).format(1, " ms")


def _rates(runs: list[E2ERun]) -> list[float]:
    return [r.rate for r in runs]


def _summarise(
    plan: Plan,
    young: Phase,
    full: Phase,
    during: list[E2ERun],
    seeding: dict[str, float],
    load: list[tuple[float, float, float]],
) -> SectionResult:
    result = SectionResult(
        "history",
        TITLE,
        ["", f"young log ({plan.young:,})", f"full log ({plan.size:,})", "full / young"],
    )
    for name in READS:
        ratio = median(full.reads[name]) / median(young.reads[name])
        result.add_row(name, _ms(young.reads[name]), _ms(full.reads[name]), f"{ratio:.2f}x")
    young_rate, full_rate = median(_rates(young.runs)), median(_rates(full.runs))
    result.add_row(
        f"end to end, send_many of {plan.deliveries:,} (deliveries/s)",
        Spread.of(_rates(young.runs)).format(0),
        Spread.of(_rates(full.runs)).format(0),
        f"{full_rate / young_rate:.2f}x",
    )
    purge_rate = [p.purged / max(p.purge_seconds, 1e-6) for p in (young, full)]
    result.add_row(
        f"delivery db purge --older-than {RETENTION_DAYS}",
        f"{young.purged:,} in {young.purge_seconds:.1f} s",
        f"{full.purged:,} in {full.purge_seconds:.1f} s",
        "",
    )
    result.add_row(
        "  purged deliveries/s",
        f"{purge_rate[0]:,.0f}",
        f"{purge_rate[1]:,.0f}",
        f"{purge_rate[1] / purge_rate[0]:.2f}x",
    )
    during_rate = median(_rates(during)) if during else float("nan")
    result.add_row(
        "end to end while the purge runs (deliveries/s)",
        "",
        f"{Spread.of(_rates(during)).format(0)}, {len(during)} runs" if during else "no run ended",
        f"{during_rate / full_rate:.2f}x of full" if during else "",
    )
    loads = ", ".join(f"{one:.1f}" for one, _, _ in load)
    result.notes += [
        f"Reads: median (min-max) of {plan.requests} after 2 not counted. HTTP through one "
        "uvicorn process (delivery.api:app, admin key, requests keep-alive client in the "
        "bench process); the CLI rows time the functions the commands call, in the bench "
        "process (no interpreter start). The id and the middle page are the delivery "
        "halfway down the listing.",
        f"End to end: send_many of {plan.deliveries:,} webhook deliveries into the paused "
        f"worker (--concurrency 16), resumed, until the last delivered_at; {plan.runs} runs "
        "each. Purge: what `delivery db purge` runs (Retention.purge, batches of 500), in a "
        "process of its own, timed from the call to its return; the worker sends beside it "
        "run after run, and 'while the purge runs' counts the runs that ended before it "
        "did, against the full log's rate without a purge.",
        f"Seeded (made {AGE.days} days ago and earlier, 1 in 50 failed): young "
        f"{seeding.get('young', 0):.1f} s through the store; full {seeding.get('seeded', 0):.0f} s "
        f"({plan.template:,} through the store, the rest copied by PostgreSQL), then VACUUM "
        f"ANALYZE {seeding.get('vacuum', 0):.0f} s. The full log also holds the young phase's "
        "end-to-end deliveries.",
        f"Load average (1 min) at the start, after the young log, after the full log's reads, "
        f"after the purge: {loads}.",
    ]
    result.data = {
        "plan": asdict(plan),
        "seeding_seconds": seeding,
        "load_average": load,
        "young": asdict(young),
        "full": asdict(full),
        "during_purge": [asdict(r) for r in during],
    }
    return result
