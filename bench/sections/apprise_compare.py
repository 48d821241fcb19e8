"""5. Apprise: the same N messages to the same receiver through Apprise's JSON service.

Apprise is called the way its users call it: one ``Apprise.notify`` after another, each
blocking until the receiver answers. Beside it: our webhook dispatcher called the same way
(one blocking ``send`` after another, in this process: the like-for-like figure), our
``send_many`` (what the caller waits for with us), and our end-to-end rate from section 1.
"""

import time
import uuid
from typing import Any

from bench.context import SUBJECT, BenchContext, payload
from bench.report import SectionResult
from bench.stack import delivery_stack

TITLE = "5. Apprise json:// beside ours (sequential, same receiver, same messages)"


def _apprise(url: str, count: int) -> tuple[float, int]:
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url.replace("http://", "json://", 1)):
        raise RuntimeError(f"Apprise refused the URL {url}")
    failures = 0
    started = time.perf_counter()
    for i in range(count):
        body = payload(i)
        if not notifier.notify(body=body["message"], title=SUBJECT):
            failures += 1
    return time.perf_counter() - started, failures


def _dispatcher(ctx: BenchContext, url: str, count: int) -> float:
    from delivery.dispatchers.base import SendContext
    from schemas import Payload

    with delivery_stack(
        ctx.processes,
        ctx.workdir / "apprise",
        broker_url="memory://",
        database_url=ctx.sqlite_url("apprise"),
        queue="bench-apprise",
    ) as stack:
        # Built as the worker builds it, in the stack's environment (loopback allowed).
        _, dispatcher = stack.engine.dispatchers.get(stack.add_channel("apprise"))
        payloads = [Payload.model_validate(payload(i)) for i in range(count)]
        try:
            started = time.perf_counter()
            for item in payloads:
                dispatcher.send(url, item, context=SendContext(delivery_id=str(uuid.uuid4())))
            return time.perf_counter() - started
        finally:
            dispatcher.close()


def run(ctx: BenchContext) -> SectionResult:
    count = ctx.config.deliveries
    receiver = ctx.receiver
    result = SectionResult("apprise", TITLE, ["sender", "messages/s", "vs Apprise", "notes"])
    before = receiver.snapshot().count
    apprise_seconds, failures = _apprise(receiver.url("/apprise"), count)
    apprise_requests = receiver.snapshot().count - before
    before = receiver.snapshot().count
    ours_seconds = _dispatcher(ctx, receiver.url("/dispatcher"), count)
    ours_requests = receiver.snapshot().count - before
    apprise_rate = count / apprise_seconds
    ours_rate = count / ours_seconds
    result.add_row(
        "Apprise json:// notify(), sequential",
        f"{apprise_rate:,.0f}",
        "1.00",
        f"{apprise_requests} requests, {failures} failures; a new connection per message",
    )
    result.add_row(
        "ours: WebhookDispatcher.send, sequential",
        f"{ours_rate:,.0f}",
        f"{ours_rate / apprise_rate:.2f}x",
        f"{ours_requests} requests; signed, keep-alive connections; no log",
    )
    rows: list[tuple[str, Any, str]] = [
        ("ours: send_many (enqueue only)", ctx.shared.get("send_many_rate"), "section 2"),
        ("ours: end to end, delivery worker", ctx.shared.get("e2e_ours_rate"), "section 1"),
    ]
    for label, rate, where in rows:
        if rate:
            result.add_row(label, f"{rate:,.0f}", f"{rate / apprise_rate:.2f}x", f"from {where}")
    result.notes += [
        f"N = {count} messages, one run each; Apprise {_apprise_version()} with its JSON "
        "service as users configure it (json://host:port/path), no throttling "
        "(request_rate_per_sec = 0 for this service).",
        "Apprise has no queue, retries or log: the caller blocks on each send. Ours returns "
        "from send_many at enqueue speed and delivers (with retries and a log) in the worker.",
    ]
    result.data = {
        "count": count,
        "apprise_rate": apprise_rate,
        "apprise_failures": failures,
        "apprise_requests": apprise_requests,
        "dispatcher_rate": ours_rate,
        "dispatcher_requests": ours_requests,
        "send_many_rate": ctx.shared.get("send_many_rate"),
        "e2e_ours_rate": ctx.shared.get("e2e_ours_rate"),
    }
    return result


def _apprise_version() -> str:
    from importlib.metadata import version

    return version("apprise")
