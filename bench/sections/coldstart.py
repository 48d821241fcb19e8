"""10. Cold start: the first seconds of a freshly started worker, ours beside the baseline.

Each run starts a fresh worker process for each contender in turn (``delivery worker``, and
the bare Celery worker of ``bench/baseline_app.py``), waits until it answers a ping (what
every other section waits for), then sends at a steady rate (100 messages/s by default) for
``coldstart_seconds`` (2 s) and measures send -> arrival at the receiver as section 6 does.
The worker is stopped after each turn, so every turn starts cold; the order alternates from
run to run. The table gives each contender's median over the runs of each run's p50, p99
and max, and the ratio of the p99s within each run.

What a worker does before it answers the ping (imports, its warm-up) is reported beside it
as the seconds from the process's start to its first ping reply: work moved out of the
first deliveries must not simply reappear there unnoticed. And the seconds from SIGTERM
to the process's exit, after its turn: how long a deploy or a replacement waits for it.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench import baseline_app
from bench.context import BenchContext
from bench.latency import LatencyReceiver
from bench.report import SectionResult, Spread, Target
from bench.sections.latency import Percentiles, _Steady, numbered_senders
from bench.stack import DeliveryStack, Worker, delivery_stack

TITLE = "10. Cold start (the first seconds after a worker is ready; webhook, SQLite log)"
OURS = "ours: delivery.send -> fresh delivery worker"
POST = "baseline: Celery task + requests.post, fresh worker"
QUEUE = "bench-coldstart"
BASELINE_QUEUE = "bench-coldstart-baseline"
#: The issue's goal: the first seconds' p99 no worse than this many times the baseline's.
GOAL_RATIO = 2.0


@dataclass(frozen=True)
class Turn:
    """One fresh worker's first seconds."""

    contender: str
    run: int
    #: From starting the process to its first ping reply.
    ready_seconds: float
    percentiles: Percentiles
    #: From SIGTERM, at the end of the turn, to the process's exit.
    stop_seconds: float


def run(ctx: BenchContext) -> SectionResult:
    from celery import Celery

    cfg = ctx.config
    result = SectionResult(
        "coldstart",
        TITLE,
        [
            "contender",
            "start -> ready s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "p99 / baseline's",
            "SIGTERM -> exit s",
        ],
    )
    turns: dict[str, list[Turn]] = {OURS: [], POST: []}
    with (
        LatencyReceiver() as receiver,
        delivery_stack(
            ctx.processes,
            ctx.workdir / "coldstart",
            broker_url=ctx.redis.url,
            database_url=ctx.sqlite_url("coldstart"),
            queue=QUEUE,
        ) as stack,
    ):
        channel = stack.add_channel("coldstart")
        client = Celery("bench-coldstart-client", broker=ctx.redis.url, set_as_current=False)
        client.conf.update(baseline_app.MATCHED)
        url = receiver.url("/coldstart")
        steady = _Steady(cfg.latency_rate)

        send_ours, send_base = numbered_senders(channel, url, client, BASELINE_QUEUE)

        def start_ours(name: str) -> Worker:
            return stack.start_worker(name, cfg.concurrency)

        def start_base(name: str) -> Worker:
            return stack.start_baseline_worker(name, cfg.concurrency, BASELINE_QUEUE)

        contenders: list[tuple[str, Callable[[str], Worker], Callable[[int], None]]] = [
            (OURS, start_ours, send_ours),
            (POST, start_base, send_base),
        ]
        try:
            # Run -1 warms this process's side (the producer's imports and connections,
            # the log file's first pages); it is not counted.
            for r in range(-1, cfg.coldstart_runs):
                order = contenders if r % 2 == 0 else contenders[::-1]
                for label, start, send in order:
                    turn = _turn(stack, receiver, steady, cfg.coldstart_seconds, label, r,
                                 start, send)  # fmt: skip
                    if r >= 0:
                        turns[label].append(turn)
        finally:
            client.close()
    _summarise(ctx, result, turns)
    return result


def _turn(
    stack: DeliveryStack,
    receiver: LatencyReceiver,
    steady: _Steady,
    seconds: float,
    label: str,
    run: int,
    start: Callable[[str], Worker],
    send: Callable[[int], None],
) -> Turn:
    name = f"coldstart-{'ours' if label == OURS else 'base'}-{run + 1}"
    started = time.monotonic()
    worker = start(name)  # returns once the worker answers a ping
    ready = time.monotonic() - started
    try:
        returned = steady.run(seconds, send)
        arrived = receiver.collect(set(returned), timeout=60)
    finally:
        stopping = time.monotonic()
        stack.stop_worker(worker)  # SIGTERM, and wait for the exit
        stopped = time.monotonic() - stopping
    latencies = [(arrived[seq] - at) * 1000 for seq, at in returned.items()]
    return Turn(label, run, round(ready, 3), Percentiles.of(latencies), round(stopped, 3))


def _summarise(ctx: BenchContext, result: SectionResult, turns: dict[str, list[Turn]]) -> None:
    cfg = ctx.config
    ratios = Spread.of(
        [
            o.percentiles.p99 / b.percentiles.p99
            for o, b in zip(turns[OURS], turns[POST], strict=True)
        ]
    )
    for label, ts in turns.items():
        result.add_row(
            label,
            Spread.of([t.ready_seconds for t in ts]).format(2),
            Spread.of([t.percentiles.p50 for t in ts]).format(2),
            Spread.of([t.percentiles.p99 for t in ts]).format(1),
            Spread.of([t.percentiles.max for t in ts]).format(1),
            ratios.format(2, "x") if label == OURS else "1.00",
            Spread.of([t.stop_seconds for t in ts]).format(2),
        )
    result.notes += [
        f"{cfg.coldstart_runs} runs; each turn starts a fresh worker, waits for its first "
        f"ping reply, sends {cfg.latency_rate:g} messages/s for {cfg.coldstart_seconds:g} s, "
        "then stops it; order alternated per run; median (min-max) over the runs of each "
        "run's figure; the p99 ratio is taken within each run.",
        f"--concurrency {cfg.concurrency} for both workers, same redis-server, own queues "
        f"({QUEUE}, {BASELINE_QUEUE}); latency = arrival at the receiver (its own process) "
        "- the time send() returned, as in section 6.",
        "start -> ready: from starting the process to its first ping reply, to 0.1 s (imports, "
        "connecting, our warm-up: workers/warmup.py).",
        "SIGTERM -> exit: from the signal, once the turn's deliveries have arrived, to the "
        "process's exit (a warm shutdown: workers/prompt_stop.py for ours).",
    ]
    result.targets.append(
        Target(
            "p99 of the first seconds after a worker starts vs the baseline's",
            f"<= {GOAL_RATIO:g}x baseline",
            f"{ratios.median:.2f}x ("
            + " vs ".join(
                f"{Spread.of([t.percentiles.p99 for t in turns[label]]).median:.1f}"
                for label in (OURS, POST)
            )
            + " ms)",
            ratios.median <= GOAL_RATIO,
        )
    )
    result.data = {
        "turns": {label: [asdict(t) for t in ts] for label, ts in turns.items()},
        "p99_ratio": asdict(ratios),
    }
