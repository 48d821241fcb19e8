"""7. PostgreSQL end to end: one worker, and two worker processes sharing one log.

The shape of a real deployment: a PostgreSQL log and one redis-server, ``send_many`` (the
batched path) and one ``delivery.send`` per message (the per-event path), into one worker
process, then into two at once (each with the same thread count). While a run drains,
``pg_stat_activity`` is sampled for backends waiting on a lock; ``pg_stat_database``'s
deadlock counter is read before and after. The bare Celery + ``requests.post`` baseline
runs in the same section on the same broker, so the ratios are within one run.
"""

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import baseline_app
from bench.context import BenchContext, payload
from bench.report import SectionResult, Spread, Target
from bench.stack import DeliveryStack, Worker, delivery_stack

TITLE = "7. PostgreSQL log end to end: one worker and two worker processes"
BASELINE_QUEUE = "bench-pg-baseline"
POST = "baseline: Celery task + requests.post"


@dataclass(frozen=True)
class PgRun:
    contender: str
    deliveries: int
    seconds: float
    rate: float
    #: Samples of pg_stat_activity that found a backend waiting on a lock, of all taken.
    lock_wait_samples: int
    samples: int
    deadlocks: int


class _LockSampler:
    """Samples PostgreSQL for lock waits every 50 ms until stopped."""

    def __init__(self, stack: DeliveryStack) -> None:
        self.engine = stack.log.engine
        self.waiting = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.05):
                found = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).scalar()
                self.samples += 1
                self.waiting += 1 if found else 0

    def __enter__(self) -> "_LockSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _deadlocks(stack: DeliveryStack) -> int:
    with stack.log.engine.connect() as conn:
        value = conn.exec_driver_sql(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).scalar()
    return int(value or 0)


class _Runner:
    def __init__(
        self, ctx: BenchContext, stack: DeliveryStack, count: int, client: Any, single: Any
    ) -> None:
        self.ctx, self.stack, self.count = ctx, stack, count
        self.client, self.single = client, single
        self.url = ctx.receiver.url("/pg")

    def ours(self, label: str, workers: list[Worker], batched: bool) -> Callable[[int], PgRun]:
        def measure(run: int) -> PgRun:
            from delivery import send_many
            from schemas import Message

            stack, count = self.stack, self.count
            channel = stack.add_channel(f"pg-{run}-{len(workers)}-{batched}")
            messages = [
                {"channel": channel, "address": self.url, "payload": payload(i)}
                for i in range(count)
            ]
            for worker in workers:
                stack.control.pause(worker)
            if batched:
                send_many(messages)
            else:
                self.single.publish([Message.model_validate(m) for m in messages])
            before = _deadlocks(stack)
            start = time.time()
            with _LockSampler(stack) as sampler:
                for worker in workers:
                    stack.control.resume(worker)
                stack.wait_delivered(channel, count, timeout=60 + count * 0.05)
            last = stack.last_delivered_at(channel)
            for worker in workers:
                stack.control.pause(worker)
            seconds = (last.timestamp() if last else time.time()) - start
            return PgRun(
                label, count, round(seconds, 3), count / seconds, sampler.waiting,
                sampler.samples, _deadlocks(stack) - before,
            )  # fmt: skip

        return measure

    def baseline(self, base: Worker, run: int) -> PgRun:
        self.stack.control.pause(base)
        receiver = self.ctx.receiver
        before = receiver.snapshot().count
        with self.client.producer_or_acquire() as producer:
            for i in range(self.count):
                self.client.send_task(
                    baseline_app.POST_TASK,
                    args=[self.url, payload(i)],
                    queue=BASELINE_QUEUE,
                    producer=producer,
                )
        start = time.time()
        self.stack.control.resume(base)
        snap = receiver.wait_for(before + self.count, timeout=60 + self.count * 0.05)
        seconds = snap.last_at - start
        return PgRun(POST, self.count, round(seconds, 3), self.count / seconds, 0, 0, 0)


def run(ctx: BenchContext) -> SectionResult:
    from celery import Celery

    from delivery.producer import Publisher
    from schemas import get_settings

    cfg = ctx.config
    result = SectionResult(
        "postgres",
        TITLE,
        ["contender", "deliveries/s", "vs baseline", "lock-wait samples", "deadlocks"],
    )
    runs: dict[str, list[PgRun]] = {}
    count = cfg.deliveries
    with delivery_stack(
        ctx.processes,
        ctx.workdir / "postgres-e2e",
        broker_url=ctx.redis.url,
        database_url=ctx.postgres_url("e2e"),
        queue="bench-pg",
    ) as stack:
        first = stack.start_worker("pg-ours-1", cfg.concurrency)
        second = stack.start_worker("pg-ours-2", cfg.concurrency)
        base = stack.start_baseline_worker("pg-baseline", cfg.concurrency, BASELINE_QUEUE)
        stack.control.pause(second)
        client = Celery("bench-pg-client", broker=ctx.redis.url, set_as_current=False)
        client.conf.update(baseline_app.MATCHED)
        single = Publisher(get_settings().model_copy(update={"batch_size": 1}))

        runner = _Runner(ctx, stack, count, client, single)
        ours = runner.ours
        baseline = functools.partial(runner.baseline, base)

        contenders: list[Callable[[int], PgRun]] = [
            ours("ours: send_many, 1 worker", [first], batched=True),
            ours("ours: send_many, 2 workers", [first, second], batched=True),
            ours("ours: delivery.send, 1 worker", [first], batched=False),
            ours("ours: delivery.send, 2 workers", [first, second], batched=False),
            baseline,
        ]
        try:
            for measure in contenders:  # warm-up: connections, caches; not measured
                measure(-1)
            for r in range(cfg.runs):
                shift = r % len(contenders)
                for measure in contenders[shift:] + contenders[:shift]:
                    m = measure(r)
                    runs.setdefault(m.contender, []).append(m)
        finally:
            client.close()
            single.app.close()
            for worker in (first, second, base):
                stack.stop_worker(worker)
    _summarise(result, runs, count, cfg.runs, cfg.concurrency)
    return result


def _summarise(
    result: SectionResult, runs: dict[str, list[PgRun]], count: int, runs_per: int,
    concurrency: int,
) -> None:  # fmt: skip
    post = runs[POST]
    for label, ms in runs.items():
        ratios = Spread.of([m.rate / b.rate for m, b in zip(ms, post, strict=True)])
        result.add_row(
            label,
            Spread.of([m.rate for m in ms]).format(0),
            ratios.format(2, "x"),
            f"{sum(m.lock_wait_samples for m in ms)} / {sum(m.samples for m in ms)}",
            sum(m.deadlocks for m in ms),
        )
    deadlocks = sum(m.deadlocks for ms in runs.values() for m in ms)
    result.notes += [
        f"N = {count} deliveries per run, {runs_per} runs, order rotated; PostgreSQL log "
        f"(throwaway cluster), one redis-server, --concurrency {concurrency} per worker "
        "process; 'vs baseline' is within each run.",
        "lock-wait samples: pg_stat_activity polled every 50 ms while a run drained, "
        "samples that found a backend waiting on a lock / samples taken.",
    ]
    result.targets.append(
        Target(
            "no deadlock, two workers on one PostgreSQL log", "0", str(deadlocks), deadlocks == 0
        )
    )
    result.data = {"runs": {k: [asdict(m) for m in v] for k, v in runs.items()}}
