"""2. Producer cost: ``send`` and ``send_many`` against raw ``send_task`` and raw kombu.

All four publish to the same redis-server, to a queue no worker reads (emptied after each
measurement), one message per delivery. Then the import cost, each figure from a fresh
interpreter: ``import delivery`` alone, and up to the first ``send`` (which imports Celery).
"""

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from bench.context import BenchContext, payload
from bench.report import SectionResult, Spread, Target

TITLE = "2. Producer cost (enqueue to redis-server; nobody consumes)"

SINK = "bench-producer-sink"
CHANNEL = "bench-producer"
ADDRESS = "https://example.invalid/hook"

SEND = "delivery.send (one call per message)"
SEND_MANY = "delivery.send_many (one call)"
SEND_TASK = "raw app.send_task loop"
KOMBU = "raw kombu Producer.publish loop"


@contextmanager
def _producer_env(broker_url: str) -> Iterator[None]:
    import os

    from schemas import get_settings

    saved = {k: os.environ.get(k) for k in ("DELIVERY_BROKER_URL", "DELIVERY_QUEUE")}
    os.environ.update({"DELIVERY_BROKER_URL": broker_url, "DELIVERY_QUEUE": SINK})
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


class _Contenders:
    """The four ways of enqueueing, each timed over ``count`` messages."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        from delivery.producer.celery_config import celery_config
        from schemas import get_settings

        self.app = Celery("bench-raw-producer", set_as_current=False)
        self.app.conf.update(celery_config(get_settings()))
        # A plain kombu Connection (stock Redis transport) and Producer; a bare Celery app
        # only builds the connection.
        self._bare = Celery("bench-raw-kombu", set_as_current=False)
        self.connection = self._bare.connection_for_write(broker_url)
        self.kombu_producer = self.connection.Producer(serializer="json")

    def close(self) -> None:
        self.connection.release()
        self._bare.close()
        self.app.close()

    def send(self, count: int) -> float:
        from delivery import send

        started = time.perf_counter()
        for i in range(count):
            send(CHANNEL, ADDRESS, payload(i))
        return time.perf_counter() - started

    def send_many(self, count: int) -> float:
        from delivery import send_many

        started = time.perf_counter()
        send_many(
            {"channel": CHANNEL, "address": ADDRESS, "payload": payload(i)} for i in range(count)
        )
        return time.perf_counter() - started

    def send_task(self, count: int) -> float:
        from delivery.producer.celery_config import DELIVER_TASK

        started = time.perf_counter()
        for i in range(count):
            task_id = str(uuid.uuid4())
            self.app.send_task(
                DELIVER_TASK,
                args=[_envelope(task_id, i)],
                task_id=task_id,
            )
        return time.perf_counter() - started

    def kombu(self, count: int) -> float:
        publish = self.kombu_producer.publish
        started = time.perf_counter()
        for i in range(count):
            publish(_envelope(str(uuid.uuid4()), i), routing_key=SINK, exchange="")
        return time.perf_counter() - started


def _envelope(delivery_id: str, i: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "id": delivery_id,
        "channel": CHANNEL,
        "address": ADDRESS,
        "payload": payload(i),
        "idempotency_key": None,
    }


def _empty_sink(broker_url: str) -> int:
    """Deliveries queued on the sink (a batch task message counts as its deliveries), which
    is then emptied."""
    import redis

    from delivery.producer.celery_config import DELIVER_BATCH_TASK

    client = redis.Redis.from_url(broker_url)
    try:
        queued = 0
        for item in client.lrange(SINK, 0, -1):
            message = json.loads(item)
            if message["headers"].get("task") == DELIVER_BATCH_TASK:
                args = json.loads(base64.b64decode(message["body"]))[0]
                queued += len(args[0])
            else:
                queued += 1
        client.delete(SINK)
        return queued
    finally:
        client.close()


#: Runs in a fresh interpreter: import time and resident memory, as JSON on stdout.
_IMPORT_PROBE = """
import json, os, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
base = rss()
t = time.perf_counter()
{statement}
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "rss": rss(), "base_rss": base,
    "sqlalchemy": "sqlalchemy" in sys.modules, "celery": "celery" in sys.modules,
    "providers": sorted(m for m in ("slack_sdk", "twilio", "apprise") if m in sys.modules)}}))
"""

_IMPORT_CASES = {
    "import delivery": "import delivery",
    "import delivery + first send": (
        "import delivery\n"
        "delivery.send('bench-producer', 'https://example.invalid/', {'message': 'hi'})"
    ),
    "reference: import celery + Celery app + first send_task": (
        "from celery import Celery\n"
        "app = Celery('x', broker=os.environ['DELIVERY_BROKER_URL'])\n"
        "app.send_task('delivery.deliver', args=[{}], queue=os.environ['DELIVERY_QUEUE'])"
    ),
}


def _import_cost(broker_url: str, runs: int) -> dict[str, dict[str, Any]]:
    import os

    env = {**os.environ, "DELIVERY_BROKER_URL": broker_url, "DELIVERY_QUEUE": SINK}
    out: dict[str, dict[str, Any]] = {}
    for label, statement in _IMPORT_CASES.items():
        samples = []
        for _ in range(runs):
            proc = subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE.format(statement=statement)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            samples.append(json.loads(proc.stdout))
        out[label] = {
            "ms": Spread.of([s["seconds"] * 1000 for s in samples]),
            "rss_added_mib": Spread.of([(s["rss"] - s["base_rss"]) / 2**20 for s in samples]),
            "rss_mib": Spread.of([s["rss"] / 2**20 for s in samples]),
            "sqlalchemy": samples[0]["sqlalchemy"],
            "celery": samples[0]["celery"],
            "providers": samples[0]["providers"],
        }
    return out


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    result = SectionResult(
        "producer", TITLE, ["producer", "messages/s", "vs raw send_task", "vs raw kombu loop"]
    )
    rates: dict[str, list[float]] = {SEND: [], SEND_MANY: [], SEND_TASK: [], KOMBU: []}
    with _producer_env(ctx.redis.url):
        contenders = _Contenders(ctx.redis.url)
        plan: list[tuple[str, Callable[[int], float], int]] = [
            (SEND, contenders.send, cfg.producer_messages),
            (SEND_MANY, contenders.send_many, cfg.producer_batch),
            (SEND_TASK, contenders.send_task, cfg.producer_messages),
            (KOMBU, contenders.kombu, cfg.producer_messages),
        ]
        try:
            for _, measure, _ in plan:  # warm up: connections, imports
                measure(50)
            _empty_sink(ctx.redis.url)
            for r in range(cfg.producer_runs):
                shift = r % len(plan)
                for label, measure, count in plan[shift:] + plan[:shift]:
                    seconds = measure(count)
                    queued = _empty_sink(ctx.redis.url)
                    if queued != count:
                        raise RuntimeError(f"{label}: {queued} messages queued, expected {count}")
                    rates[label].append(count / seconds)
        finally:
            contenders.close()
    imports = _import_cost(ctx.redis.url, cfg.import_runs)
    _summarise(ctx, result, rates, imports)
    return result


def _summarise(
    ctx: BenchContext,
    result: SectionResult,
    rates: dict[str, list[float]],
    imports: dict[str, dict[str, Any]],
) -> None:
    cfg = ctx.config
    # Ratios within each run (same moment, same machine load), then their median.
    per_run = list(zip(*(rates[k] for k in (SEND, SEND_MANY, SEND_TASK, KOMBU)), strict=True))
    ratio = {
        "send/send_task": Spread.of([s / t for s, _, t, _ in per_run]),
        "send_many/send_task": Spread.of([m / t for _, m, t, _ in per_run]),
        "send/kombu": Spread.of([s / k for s, _, _, k in per_run]),
        "send_many/kombu": Spread.of([m / k for _, m, _, k in per_run]),
        "send_task/kombu": Spread.of([t / k for _, _, t, k in per_run]),
        "send_many/send": Spread.of([m / s for s, m, _, _ in per_run]),
    }
    result.add_row(
        SEND,
        Spread.of(rates[SEND]).format(),
        ratio["send/send_task"].format(2, "x"),
        ratio["send/kombu"].format(2, "x"),
    )
    result.add_row(
        SEND_MANY,
        Spread.of(rates[SEND_MANY]).format(),
        ratio["send_many/send_task"].format(2, "x"),
        ratio["send_many/kombu"].format(2, "x"),
    )
    result.add_row(
        SEND_TASK,
        Spread.of(rates[SEND_TASK]).format(),
        "1.00",
        ratio["send_task/kombu"].format(2, "x"),
    )
    result.add_row(KOMBU, Spread.of(rates[KOMBU]).format(), "", "1.00")
    result.add_row("", "", "", "")
    result.add_row("[bold]import cost[/] (fresh interpreter)", "time", "RSS added", "loads")
    for label, cost in imports.items():
        loaded = [name for name in ("sqlalchemy", "celery") if cost[name]] + cost["providers"]
        result.add_row(
            label,
            cost["ms"].format(0, " ms"),
            cost["rss_added_mib"].format(1, " MiB"),
            ", ".join(loaded) or "neither SQLAlchemy nor Celery",
        )
    result.notes += [
        f"{cfg.producer_messages} messages per loop (send_many: {cfg.producer_batch} in one call), "
        f"{cfg.producer_runs} runs, order rotated; median (min-max); ratios within each run.",
        "send and send_many validate with pydantic and derive the id; the raw loops publish "
        "the same envelope dict without validation (send_task through a Celery app with our "
        "celery_config, kombu with one LPUSH per message).",
        "import figures: median of "
        f"{cfg.import_runs} interpreters; RSS added = resident memory after minus before.",
    ]
    many_vs_send = ratio["send_many/send"]
    many_vs_kombu = ratio["send_many/kombu"]
    send_vs_task = ratio["send/send_task"]
    result.targets += [
        Target(
            "send_many vs send (per message)",
            ">= 5x",
            many_vs_send.format(1, "x", markup=False),
            many_vs_send.median >= 5.0,
        ),
        Target(
            "send_many vs raw kombu publish loop",
            "within 2x (>= 0.5x)",
            many_vs_kombu.format(2, "x", markup=False),
            many_vs_kombu.median >= 0.5,
        ),
        Target(
            "send vs raw send_task",
            "within 20% (>= 0.8x)",
            send_vs_task.format(2, "x", markup=False),
            send_vs_task.median >= 0.8,
        ),
    ]
    ctx.shared["send_many_rate"] = Spread.of(rates[SEND_MANY]).median
    result.data = {
        "rates": rates,
        "ratios": {k: asdict(v) for k, v in ratio.items()},
        "imports": {
            label: {k: asdict(v) if isinstance(v, Spread) else v for k, v in cost.items()}
            for label, cost in imports.items()
        },
    }
