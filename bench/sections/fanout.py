"""9. Fan-out rate: deliveries created per second from events.

What a worker's fan-out task does for each event (``Notifier.fan_out``): record the event,
find its subscriptions, render each one's template in the budgeted sandbox, record what
it made and publish the deliveries to redis-server, in batches, to a queue no worker reads.
Two shapes: one event with many subscriptions, and many events with a few each; rendered
from a template, and without one (the uniform payload).

Beside them, the baseline a service would write without ``notify``: render the same
template with plain (unsandboxed) Jinja2 and ``send_many`` the results. The gap is what
the event record, the subscription lookup, the sandbox's budget and the bookkeeping cost.
"""

import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.context import BenchContext
from bench.report import SectionResult, Spread

TITLE = "9. Fan-out rate (events to deliveries, published to redis-server; nobody consumes)"

SINK = "bench-fanout-sink"
SUBJECT = "Order {{ order.id }} has shipped"
TEXT = (
    "Hello {{ name|title }},\n\nyour order {{ order.id }} ({{ order.lines|length }} items, "
    "{{ '%.2f'|format(order.total) }} GBP) is on its way.\n"
    "{% for item in order.lines %}- {{ item.name }} x{{ item.qty }}\n{% endfor %}"
)
HTML = (
    "<p>Hello {{ name|title }},</p><ul>{% for item in order.lines %}"
    "<li>{{ item.name }} &times; {{ item.qty }}</li>{% endfor %}</ul>"
)

ONE_EVENT = "one event, {subs} subscriptions"
MANY_EVENTS = "{events} events, {subs} subscriptions each"


def _context(i: int) -> dict[str, Any]:
    items = [{"name": f"item {k}", "qty": k + 1} for k in range(3)]
    return {
        "order": {"id": i, "total": 12.5 + i, "lines": items},
        "name": "ann lee",
        "email": f"customer{i}@example.com",
    }


@contextmanager
def _env(ctx: BenchContext) -> Iterator[None]:
    from schemas import get_settings

    keys = ("DELIVERY_BROKER_URL", "DELIVERY_QUEUE", "DELIVERY_DATABASE_URL", "DELIVERY_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        {
            "DELIVERY_BROKER_URL": ctx.redis.url,
            "DELIVERY_QUEUE": SINK,
            "DELIVERY_DATABASE_URL": ctx.sqlite_url("fanout"),
            "DELIVERY_HOME": str(ctx.workdir / "fanout-home"),
        }
    )
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
        from delivery.producer import reset_publisher

        reset_publisher()


class _Bench:
    def __init__(self, ctx: BenchContext) -> None:
        from delivery.engine.assembly import assemble
        from delivery.log.migrate import upgrade
        from delivery.notifications import Notifier
        from schemas import get_settings

        settings = get_settings()
        upgrade(settings.resolved_database_url)
        self.assembly = assemble(settings)
        self.assembly.channels.add("mail", "console", {})
        self.notifier = Notifier(self.assembly.log)
        self.notifier.templates.add("shipped", subject=SUBJECT, text=TEXT, html=HTML)
        self.broker_url = ctx.redis.url
        self.serial = 0

    def subscribe(self, event: str, count: int, *, template: str | None) -> None:
        for _ in range(count):
            self.notifier.subscriptions.add(event, "mail", "{{ email }}", template=template)

    def fan_out(self, event: str, events: int) -> tuple[float, int]:
        """Seconds to fan ``events`` events out, and the deliveries they queued."""
        from delivery.producer.events import event_id
        from delivery.producer.publisher import get_publisher
        from schemas.events import Event

        publisher = get_publisher()
        batch = []
        for _ in range(events):
            self.serial += 1
            key = f"bench-{self.serial}"
            batch.append(Event(id=event_id(event, key), name=event, context=_context(self.serial)))
        started = time.perf_counter()
        for item in batch:
            self.notifier.fan_out(item, publisher)
        seconds = time.perf_counter() - started
        return seconds, _empty_sink_of(self.broker_url)

    def baseline(self, count: int) -> tuple[float, int]:
        """Plain Jinja2 renders and one ``send_many``: the same deliveries, hand-made."""
        import jinja2

        from delivery import send_many

        env = jinja2.Environment(autoescape=False)
        html_env = jinja2.Environment(autoescape=True)
        subject, text = env.from_string(SUBJECT), env.from_string(TEXT)
        html = html_env.from_string(HTML)
        started = time.perf_counter()
        messages = []
        for i in range(count):
            context = _context(i)
            messages.append(
                {
                    "channel": "mail",
                    "address": context["email"],
                    "payload": {
                        "subject": subject.render(context),
                        "message": text.render(context),
                        "html_message": html.render(context),
                        "data": context,
                    },
                }
            )
        send_many(messages)
        seconds = time.perf_counter() - started
        return seconds, _empty_sink_of(self.broker_url)


def _empty_sink_of(broker_url: str) -> int:
    """Deliveries queued on the sink (a batch counts as its deliveries); then emptied."""
    import redis

    from delivery.producer.celery_config import DELIVER_BATCH_TASK

    client = redis.Redis.from_url(broker_url)
    try:
        queued = 0
        for item in client.lrange(SINK, 0, -1):
            message = json.loads(item)
            if message["headers"].get("task") == DELIVER_BATCH_TASK:
                queued += len(json.loads(base64.b64decode(message["body"]))[0][0])
            else:
                queued += 1
        client.delete(SINK)
        return queued
    finally:
        client.close()


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    result = SectionResult("fanout", TITLE, ["shape", "deliveries", "deliveries/s", "vs baseline"])
    subs, events, few = cfg.fanout_subscriptions, cfg.fanout_events, cfg.fanout_few
    with _env(ctx):
        bench = _Bench(ctx)
        bench.subscribe("order.shipped", subs, template="shipped")
        bench.subscribe("order.paid", few, template="shipped")
        bench.subscribe("order.raw", subs, template=None)
        bench.fan_out("order.paid", 3)  # warm up: connections, template compiles, imports
        bench.baseline(50)
        plan = [
            (ONE_EVENT.format(subs=subs) + ", templated", "order.shipped", 1, subs),
            (MANY_EVENTS.format(events=events, subs=few) + ", templated", "order.paid", events,
             events * few),
            (ONE_EVENT.format(subs=subs) + ", no template", "order.raw", 1, subs),
        ]  # fmt: skip
        rates: dict[str, list[float]] = {label: [] for label, *_ in plan}
        baseline: list[float] = []
        for _ in range(cfg.fanout_runs):
            for label, event, count, expected in plan:
                seconds, queued = bench.fan_out(event, count)
                if queued != expected:
                    raise RuntimeError(f"{label}: {queued} deliveries queued, expected {expected}")
                rates[label].append(queued / seconds)
            seconds, queued = bench.baseline(subs)
            if queued != subs:
                raise RuntimeError(f"baseline: {queued} deliveries queued, expected {subs}")
            baseline.append(queued / seconds)
        bench.assembly.close()
    base = Spread.of(baseline)
    for label, *_rest, expected in plan:
        spread = Spread.of(rates[label])
        result.rows.append(
            [label, str(expected), spread.format(0), f"{spread.median / base.median:.2f}x"]
        )
        result.data[label] = spread.__dict__
    result.rows.append(
        ["baseline: plain Jinja2 render + send_many", str(subs), base.format(0), "1.00x"]
    )
    result.data["baseline"] = base.__dict__
    result.notes.append(
        "Each fan-out records the event, looks its subscriptions up, renders in the "
        "budgeted sandbox (subject, text and HTML), records one row per subscription and "
        "publishes in batches; the baseline renders unsandboxed and only publishes. "
        "SQLite log; medians over "
        f"{cfg.fanout_runs} run(s), range in brackets."
    )
    return result
