"""4. Memory: a worker's resident memory after 1,000 and after 50,000 deliveries.

A fresh ``delivery worker`` (same settings as section 1, its own SQLite log) delivers the
first checkpoint's worth, settles, and its RSS is read from /proc; then the rest arrive in
batches while RSS is sampled, and it is read again at the second checkpoint. The first
thousand deliveries warm every cache, pool and per-thread client, so growth after that is
what a leak would look like.
"""

import time
from dataclasses import dataclass

from bench.context import BenchContext, payload
from bench.processes import rss_bytes
from bench.report import SectionResult, Target
from bench.stack import DeliveryStack, Worker, delivery_stack

TITLE = "4. Worker memory (resident set, delivery worker process)"

#: Messages per send_many while feeding the worker (keeps the queue ahead of it).
FEED_BATCH = 5000
#: Growth between the checkpoints that counts as a leak.
GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class Sample:
    delivered: int
    rss: int
    seconds: float


def _feed_and_wait(
    stack: DeliveryStack,
    worker: Worker,
    channel: str,
    url: str,
    start: int,
    stop: int,
    samples: list[Sample],
    started: float,
) -> None:
    from delivery import send_many

    sent = start
    step = max(1000, (stop - start) // 10)
    next_sample = start + step
    while True:
        # Keep at most two batches queued, so the log's progress is the worker's.
        done = stack.progress(channel).get("delivered", 0)
        if sent < stop and sent - done < 2 * FEED_BATCH:
            batch = range(sent, min(stop, sent + FEED_BATCH))
            send_many({"channel": channel, "address": url, "payload": payload(i)} for i in batch)
            sent = batch.stop
        if done >= next_sample:
            samples.append(Sample(done, rss_bytes(worker.pid), time.monotonic() - started))
            next_sample = done + step
        if done >= stop:
            return
        if not worker.child.alive():
            raise RuntimeError(f"worker exited:\n{worker.child.output()[-3000:]}")
        time.sleep(0.5)


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    first, second = cfg.memory_checkpoints
    result = SectionResult("memory", TITLE, ["after deliveries", "RSS", "vs first checkpoint"])
    samples: list[Sample] = []
    with delivery_stack(
        ctx.processes,
        ctx.workdir / "memory",
        broker_url=ctx.redis.url,
        database_url=ctx.sqlite_url("memory"),
        queue="bench-memory",
    ) as stack:
        worker = stack.start_worker("memory", cfg.concurrency)
        channel = stack.add_channel("memory")
        url = ctx.receiver.url("/memory")
        started = time.monotonic()
        try:
            baseline_rss = rss_bytes(worker.pid)
            _feed_and_wait(stack, worker, channel, url, 0, first, [], started)
            time.sleep(1.0)  # let the pool go idle before reading
            at_first = Sample(first, rss_bytes(worker.pid), time.monotonic() - started)
            samples.append(at_first)
            _feed_and_wait(stack, worker, channel, url, first, second, samples, started)
            time.sleep(1.0)
            at_second = Sample(second, rss_bytes(worker.pid), time.monotonic() - started)
            samples.append(at_second)
            counts = stack.progress(channel)
        finally:
            stack.stop_worker(worker)
    mib = 2**20
    growth = (at_second.rss - at_first.rss) / at_first.rss
    result.add_row("0 (worker ready)", f"{baseline_rss / mib:.1f} MiB", "")
    for s in sorted(samples, key=lambda s: s.delivered):
        change = (s.rss - at_first.rss) / at_first.rss
        result.add_row(f"{s.delivered:,}", f"{s.rss / mib:.1f} MiB", f"{change:+.1%}")
    peak = max(s.rss for s in samples)
    rate = (second - first) / max(0.001, at_second.seconds - at_first.seconds)
    result.notes += [
        f"--concurrency {cfg.concurrency}, SQLite log; checkpoints read after 1 s idle; the "
        f"other rows are sampled while delivering (peak {peak / mib:.1f} MiB).",
        f"{second - first:,} deliveries after the first checkpoint at {rate:,.0f}/s; "
        f"final log: {counts}.",
    ]
    result.targets.append(
        Target(
            f"worker memory growth {first:,} -> {second:,} deliveries",
            f"< {GROWTH_LIMIT:.0%}",
            f"{growth:+.1%} ({at_first.rss / mib:.1f} -> {at_second.rss / mib:.1f} MiB)",
            growth < GROWTH_LIMIT,
        )
    )
    result.data = {
        "checkpoints": [first, second],
        "rss_ready": baseline_rss,
        "samples": [s.__dict__ for s in samples],
        "growth": growth,
        "final_counts": counts,
    }
    return result
