"""1. End-to-end throughput: ours beside a bare Celery task, same broker, pool, concurrency.

Each run, for each contender: stop the worker consuming (Celery remote control), enqueue N
messages, note the wall-clock time, let the worker consume again, and take the time of the
last delivery: ``max(delivered_at)`` in the log for ours, the receiver's last request for
the baseline. Enqueueing is therefore outside the timed part for both, and no polling
granularity is inside it. The contenders' order rotates from run to run so that drift in
the machine's load does not always favour the same one.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import baseline_app
from bench.context import BenchContext, payload
from bench.processes import BenchSetupError, RabbitServer
from bench.report import SectionResult, Spread, Target
from bench.stack import DeliveryStack, Worker, delivery_stack
from delivery.producer.celery_config import DELIVER_BATCH_TASK, DELIVER_TASK

TITLE = "1. End-to-end throughput (webhook, SQLite log; Redis, and RabbitMQ)"

OURS = "ours: send_many -> delivery worker"
SINGLE = "ours, one task per delivery (DELIVERY_BATCH_SIZE=1)"
POST = "baseline: Celery task + requests.post"
SESSION = "baseline: Celery task + requests.Session"
BASELINE_QUEUE = "bench-baseline"
#: Seconds allowed per delivery before a run is declared stuck (generous: a noisy machine).
TIMEOUT_PER_DELIVERY = 0.05


@dataclass(frozen=True)
class Measurement:
    contender: str
    run: int
    deliveries: int
    seconds: float
    rate: float
    enqueue_rate: float
    #: Worker process CPU time (all threads) per delivery, in milliseconds.
    cpu_ms: float
    #: Requests the receiver counted during the run (expect exactly ``deliveries``).
    requests: int
    delivered: int


class _Runner:
    def __init__(self, ctx: BenchContext, stack: DeliveryStack, ours: Worker, base: Worker) -> None:
        from celery import Celery

        self.ctx = ctx
        self.stack = stack
        self.ours = ours
        self.base = base
        self.client = Celery("bench-baseline-client", broker=stack.broker_url, set_as_current=False)
        self.client.conf.update(baseline_app.MATCHED)
        #: An external sink (``--sink``) cannot be counted: the baseline's worker is asked
        #: when its last task ended instead (``bench_progress``, bench/baseline_app.py).
        self.sink = ctx.config.sink
        self.url = self.sink or ctx.receiver.url("/e2e")
        from delivery.producer.publisher import Publisher
        from schemas import get_settings

        # The path a delivery takes on its own (delivery.send, retries): no batching.
        self.single = Publisher(get_settings().model_copy(update={"batch_size": 1}))

    def close(self) -> None:
        self.client.close()
        self.single.app.close()

    def ours_run(self, run: int, count: int, *, batched: bool = True) -> Measurement:
        from delivery import send_many
        from schemas import Message

        channel = self.stack.add_channel(f"e2e-{run}-{'batched' if batched else 'single'}")
        self.stack.control.pause(self.ours)
        started = time.perf_counter()
        messages = (
            {"channel": channel, "address": self.url, "payload": payload(i)} for i in range(count)
        )
        if batched:
            receipts = send_many(messages)
        else:
            receipts = self.single.publish([Message.model_validate(m) for m in messages])
        enqueue = time.perf_counter() - started
        return self._drain(
            OURS if batched else SINGLE,
            run,
            len(receipts),
            enqueue,
            self.ours,
            finished=lambda: self._ours_finished(channel, count),
        )

    def _ours_finished(self, channel: str, count: int) -> tuple[float, int]:
        counts = self.stack.wait_delivered(channel, count, timeout=60)
        last = self.stack.last_delivered_at(channel)
        if last is None:
            raise RuntimeError(f"nothing delivered on {channel}: {counts}")
        return last.timestamp(), counts.get("delivered", 0)

    def baseline_run(self, run: int, count: int, task: str, label: str) -> Measurement:
        self.stack.control.pause(self.base)
        started = time.perf_counter()
        with self.client.producer_or_acquire() as producer:
            for i in range(count):
                self.client.send_task(
                    task, args=[self.url, payload(i)], queue=BASELINE_QUEUE, producer=producer
                )
        enqueue = time.perf_counter() - started
        return self._drain(label, run, count, enqueue, self.base, finished=None)

    def _baseline_progress(self) -> dict[str, float]:
        replies = self.stack.control.app.control.broadcast(
            "bench_progress", destination=[self.base.hostname], reply=True, timeout=2, limit=1
        )
        if not replies:
            raise RuntimeError(f"{self.base.hostname} did not answer bench_progress")
        progress: dict[str, float] = next(iter(replies[0].values()))
        return progress

    def _baseline_done(self) -> int:
        return int(self._baseline_progress()["count"])

    def _baseline_finished(self, before: int, count: int, timeout: float) -> tuple[float, int]:
        """When the baseline's worker had ``count`` more tasks succeeded, and how many."""
        deadline = time.monotonic() + timeout
        total = before + count
        while True:
            progress = self._baseline_progress()
            if progress["count"] >= total:
                return progress["last_at"], int(progress["count"]) - before
            if time.monotonic() > deadline:
                raise TimeoutError(f"baseline: {progress} after {timeout:g}s (want {total})")
            time.sleep(0.05)

    def _drain(
        self,
        label: str,
        run: int,
        count: int,
        enqueue: float,
        worker: Worker,
        finished: Callable[[], tuple[float, int]] | None,
    ) -> Measurement:
        receiver = self.ctx.receiver
        before = receiver.snapshot().count
        done_before = self._baseline_done() if self.sink and finished is None else 0
        cpu_before = self.ctx.cpu_seconds(worker.pid)
        start = time.time()
        self.stack.control.resume(worker)
        timeout = 30 + count * TIMEOUT_PER_DELIVERY
        if self.sink and finished is None:
            end, delivered = self._baseline_finished(done_before, count, timeout)
        elif finished is None:
            end, delivered = receiver.wait_for(before + count, timeout=timeout).last_at, count
        else:
            if not self.sink:
                receiver.wait_for(before + count, timeout=timeout)
            end, delivered = finished()
        cpu = self.ctx.cpu_seconds(worker.pid) - cpu_before
        # Let stragglers (duplicates, retries) show up in the request count.
        time.sleep(0.2)
        seconds = end - start
        return Measurement(
            contender=label,
            run=run,
            deliveries=count,
            seconds=round(seconds, 4),
            rate=count / seconds,
            enqueue_rate=count / enqueue,
            cpu_ms=cpu * 1000 / count,
            # Unknown at an external sink.
            requests=-1 if self.sink else receiver.snapshot().count - before,
            delivered=delivered,
        )


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult(
        "e2e",
        TITLE,
        [
            "contender",
            "deliveries/s",
            "ours / this",
            "worker CPU ms/delivery",
            "enqueue msgs/s",
            "requests / delivered",
            "RabbitMQ: deliveries/s",
            "RabbitMQ: ours / this",
        ],
    )
    measurements, ours_config = _measure(ctx, ctx.redis.url, "e2e")
    rabbit: Rabbit | None = None
    try:
        server = RabbitServer(ctx.processes)
    except BenchSetupError as exc:
        result.notes.append(f"RabbitMQ columns left empty: {exc}")
    else:
        ctx.console.print(f"RabbitMQ node started in {server.startup_seconds:.1f} s")
        try:
            measured, config = _measure(ctx, server.url, "e2e_rabbitmq")
        finally:
            ctx.processes.stop("rabbitmq-server")  # idle, it would still share the CPUs
        rabbit = Rabbit(server.url, measured, config)
    _summarise(ctx, result, measurements, ours_config, rabbit)
    return result


@dataclass(frozen=True)
class Rabbit:
    """The same contenders on a RabbitMQ node the bench started."""

    url: str
    measurements: dict[str, list[Measurement]]
    ours_config: dict[str, Any]


def _measure(
    ctx: BenchContext, broker_url: str, name: str
) -> tuple[dict[str, list[Measurement]], dict[str, Any]]:
    """Every contender, ``runs`` times each, on ``broker_url``: warm-up first, then the
    order rotated from run to run."""
    cfg = ctx.config
    measurements: dict[str, list[Measurement]] = {OURS: [], SINGLE: [], POST: [], SESSION: []}
    with delivery_stack(
        ctx.processes,
        ctx.workdir / name,
        broker_url=broker_url,
        database_url=ctx.sqlite_url(name),
        queue="bench-delivery",
    ) as stack:
        ours_config = _our_settings()
        ours = stack.start_worker("ours", cfg.concurrency)
        base = stack.start_baseline_worker("baseline", cfg.concurrency, BASELINE_QUEUE)
        runner = _Runner(ctx, stack, ours, base)
        try:
            # Warm up: imports, connections, the channel cache; not measured.
            warm = min(200, cfg.deliveries)
            runner.ours_run(-1, warm)
            runner.ours_run(-1, warm, batched=False)
            runner.baseline_run(-1, warm, baseline_app.POST_TASK, POST)
            runner.baseline_run(-1, warm, baseline_app.SESSION_TASK, SESSION)
            contenders: list[Callable[[int], Measurement]] = [
                lambda r: runner.ours_run(r, cfg.deliveries),
                lambda r: runner.ours_run(r, cfg.deliveries, batched=False),
                lambda r: runner.baseline_run(r, cfg.deliveries, baseline_app.POST_TASK, POST),
                lambda r: runner.baseline_run(
                    r, cfg.deliveries, baseline_app.SESSION_TASK, SESSION
                ),
            ]
            for r in range(cfg.runs):
                shift = r % len(contenders)
                for measure in contenders[shift:] + contenders[:shift]:
                    m = measure(r)
                    measurements[m.contender].append(m)
        finally:
            runner.close()
            stack.stop_worker(ours)
            stack.stop_worker(base)
    return measurements, ours_config


#: Celery settings shown side by side for the two workers.
_SHOWN = (
    "broker_transport",
    "worker_pool",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "task_ignore_result",
    "worker_send_task_events",
    "task_send_sent_event",
    "broker_transport_options",
)


def _our_settings() -> dict[str, Any]:
    """Our worker's Celery settings, from the same function ``delivery worker`` uses."""
    from delivery.producer.celery_config import celery_config
    from schemas import get_settings

    config = celery_config(get_settings())
    return {key: config.get(key) for key in _SHOWN if key in config}


def _batch_size() -> int:
    from schemas import get_settings

    return get_settings().batch_size


def _coalesce() -> str:
    from schemas import get_settings

    return str(get_settings().coalesce).lower()


def _baseline_settings() -> dict[str, Any]:
    config = baseline_app.app.conf
    return {key: config.get(key) for key in _SHOWN}


def _ratios(measurements: dict[str, list[Measurement]]) -> dict[str, Spread]:
    """Ours over each other contender, within each run."""
    ours = measurements[OURS]
    return {
        label: Spread.of([o.rate / b.rate for o, b in zip(ours, measurements[label], strict=True)])
        for label in (SINGLE, POST, SESSION)
    }


def _summarise(
    ctx: BenchContext,
    result: SectionResult,
    measurements: dict[str, list[Measurement]],
    ours_config: dict[str, Any],
    rabbit: "Rabbit | None" = None,
) -> None:
    cfg = ctx.config
    ours = measurements[OURS]
    ratios = _ratios(measurements)
    rabbit_ratios = _ratios(rabbit.measurements) if rabbit else {}
    single_vs_post = Spread.of(
        [s.rate / b.rate for s, b in zip(measurements[SINGLE], measurements[POST], strict=True)]
    )
    for label, ms in measurements.items():
        rate = Spread.of([m.rate for m in ms])
        ratio = "1.00" if label == OURS else ratios[label].format(2, "x")
        rabbit_rate, rabbit_ratio = "-", "-"
        if rabbit is not None:
            rabbit_rate = Spread.of([m.rate for m in rabbit.measurements[label]]).format(0)
            rabbit_ratio = "1.00" if label == OURS else rabbit_ratios[label].format(2, "x")
        result.add_row(
            label,
            rate.format(0),
            ratio,
            Spread.of([m.cpu_ms for m in ms]).format(2),
            Spread.of([m.enqueue_rate for m in ms]).format(0),
            f"{'-' if cfg.sink else sum(m.requests for m in ms)} / {sum(m.delivered for m in ms)}",
            rabbit_rate,
            rabbit_ratio,
        )
    fastest = max(m.rate for ms in measurements.values() for m in ms)
    ceiling = ctx.shared.get("receiver_ceiling", 0.0)
    result.notes += [
        f"N = {cfg.deliveries} deliveries per run, {cfg.runs} runs, order rotated per run; "
        "median (min-max); 'ours / this' is the ratio within each run.",
        f"both workers: same redis-server ({ctx.redis.url}), --pool threads, "
        f"--concurrency {cfg.concurrency}, task_acks_late, task_reject_on_worker_lost, "
        "worker_prefetch_multiplier=1, JSON, ignore_result; own queues "
        f"(bench-delivery, {BASELINE_QUEUE}).",
        f"ours, from delivery.producer.celery_config: {_describe(ours_config)}.",
        f"ours: send_many publishes {DELIVER_BATCH_TASK} task messages of up to "
        f"DELIVERY_BATCH_SIZE={_batch_size()} deliveries, each claimed and recorded in one "
        f"transaction; '{SINGLE}' publishes one {DELIVER_TASK} per delivery, the path "
        "delivery.send and retries take: it does "
        f"{single_vs_post.format(2, 'x', markup=False)} the requests.post baseline's rate.",
        f"our worker coalesces single tasks (workers/coalesce.py): DELIVERY_COALESCE="
        f"{_coalesce()}; run with DELIVERY_COALESCE=false for Celery's own path.",
        f"baseline (bench/baseline_app.py): {_describe(_baseline_settings())}; no log, "
        "no signing (a bare task: what ours adds is what is measured).",
        "timed from 'resume consuming' (queue pre-filled) to the last delivered_at in the log "
        "(ours) or the receiver's last request (baseline).",
        f"receiver ceiling {ceiling:,.0f} req/s = {ceiling / fastest:.0f}x the fastest "
        "contender, so it is not the bottleneck.",
    ]
    if cfg.sink:
        result.notes[-2:] = [
            f"every contender posted to the external sink {cfg.sink} (--sink; its ceiling is "
            "not measured, nor its requests counted); timed from 'resume consuming' to the "
            "last delivered_at in the log (ours) or the end of the baseline worker's last "
            "successful task (its bench_progress control command).",
        ]
    if rabbit is not None:
        requests: int | str = (
            "-" if cfg.sink else sum(m.requests for ms in rabbit.measurements.values() for m in ms)
        )
        delivered = sum(m.delivered for ms in rabbit.measurements.values() for m in ms)
        result.notes += [
            f"RabbitMQ columns: the same contenders, runs and settings on a RabbitMQ node the "
            f"bench started ({rabbit.url}); ours with its transport and publisher confirms "
            f"({_describe(rabbit.ours_config)}), the baseline with Celery's defaults "
            f"(kombu's py-amqp transport, no confirms); requests / delivered "
            f"{requests} / {delivered}.",
        ]
    post = ratios[POST]
    result.targets.append(
        Target(
            "end-to-end vs Celery + requests.post",
            ">= 1.0x (aim 1.5x)",
            post.format(2, "x", markup=False),
            post.median >= 1.0,
        )
    )
    ctx.shared["e2e_ours_rate"] = Spread.of([m.rate for m in ours]).median
    ctx.shared["e2e_post_rate"] = Spread.of([m.rate for m in measurements[POST]]).median
    result.data = {
        "measurements": {k: [asdict(m) for m in v] for k, v in measurements.items()},
        "ratio_vs_post": asdict(ratios[POST]),
        "ratio_vs_session": asdict(ratios[SESSION]),
        "ratio_single_vs_post": asdict(single_vs_post),
        "ours_settings": ours_config,
        "baseline_settings": _baseline_settings(),
    }
    if rabbit is not None:
        result.data["rabbitmq"] = {
            "measurements": {k: [asdict(m) for m in v] for k, v in rabbit.measurements.items()},
            "ratio_vs_post": asdict(rabbit_ratios[POST]),
            "ratio_vs_session": asdict(rabbit_ratios[SESSION]),
            "ratio_single_vs_post": asdict(
                Spread.of(
                    [
                        s.rate / b.rate
                        for s, b in zip(
                            rabbit.measurements[SINGLE], rabbit.measurements[POST], strict=True
                        )
                    ]
                )
            ),
            "ours_settings": rabbit.ours_config,
        }


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
