"""6. Latency at a steady rate: send → arrival at the receiver, ours beside the baseline.

Far below either side's capacity (100 messages/s by default), one ``delivery.send`` per
message for ours and one ``send_task`` for the bare Celery + ``requests.post`` baseline, on
the same redis-server, pool and concurrency. Each message's latency is the time its request
reached the receiver (a process of its own) minus the time its send returned. The
contenders take turns for ``latency_seconds`` each, ``latency_runs`` times. The slowest
deliveries' send times are kept, so a periodic stall shows as a pattern.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import baseline_app
from bench.context import BenchContext
from bench.latency import LatencyReceiver
from bench.report import SectionResult, Target
from bench.stack import delivery_stack

TITLE = "6. Latency at a steady rate (send -> arrival, webhook, SQLite log)"
OURS = "ours: delivery.send -> delivery worker"
POST = "baseline: Celery task + requests.post"
BASELINE_QUEUE = "bench-latency-baseline"
#: Latencies above this count as slow and are listed with their send times.
SLOW_MS = 10.0


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float
    p90: float
    p99: float
    max: float
    slow: int

    @classmethod
    def of(cls, latencies: list[float]) -> "Percentiles":
        ordered = sorted(latencies)

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return cls(
            len(ordered), at(0.5), at(0.9), at(0.99), ordered[-1],
            sum(1 for v in ordered if v > SLOW_MS),
        )  # fmt: skip


class _Steady:
    """Sends at a fixed rate and keeps when each send returned."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.seq = 0

    def run(self, seconds: float, send: Any) -> dict[int, float]:
        returned: dict[int, float] = {}
        count = int(seconds / self.interval)
        start = time.perf_counter()
        for i in range(count):
            wait = start + i * self.interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.seq += 1
            send(self.seq)
            returned[self.seq] = time.time()
        return returned


def numbered_senders(
    channel: str, url: str, client: Any, baseline_queue: str
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """Send message number ``seq`` to ``url``: ours with ``delivery.send`` on ``channel``,
    the baseline's as its task on ``baseline_queue`` (sections 6 and 10)."""
    import delivery

    def send_ours(seq: int) -> None:
        delivery.send(channel, url, {"message": f"order {seq}", "data": {"seq": seq}})

    def send_base(seq: int) -> None:
        client.send_task(
            baseline_app.POST_TASK,
            args=[url, {"message": f"order {seq}", "seq": seq}],
            queue=baseline_queue,
        )

    return send_ours, send_base


def run(ctx: BenchContext) -> SectionResult:
    from celery import Celery

    cfg = ctx.config
    result = SectionResult(
        "latency", TITLE, ["contender", "messages", "p50 ms", "p90 ms", "p99 ms", "max ms",
                           f"> {SLOW_MS:g} ms"],
    )  # fmt: skip
    latencies: dict[str, list[float]] = {OURS: [], POST: []}
    #: (turn, seconds into the turn, latency ms) of every slow delivery.
    slow: dict[str, list[tuple[int, float, float]]] = {OURS: [], POST: []}
    with (
        LatencyReceiver() as receiver,
        delivery_stack(
            ctx.processes,
            ctx.workdir / "latency",
            broker_url=ctx.redis.url,
            database_url=ctx.sqlite_url("latency"),
            queue="bench-latency",
        ) as stack,
    ):
        channel = stack.add_channel("latency")
        ours = stack.start_worker("latency-ours", cfg.concurrency)
        base = stack.start_baseline_worker("latency-base", cfg.concurrency, BASELINE_QUEUE)
        client = Celery("bench-latency-client", broker=ctx.redis.url, set_as_current=False)
        client.conf.update(baseline_app.MATCHED)
        url = receiver.url("/latency")
        steady = _Steady(cfg.latency_rate)

        send_ours, send_base = numbered_senders(channel, url, client, BASELINE_QUEUE)

        try:
            # Warm up both (imports, connections, the channel cache); not measured.
            for send in (send_ours, send_base):
                warm = steady.run(1.0, send)
                receiver.collect(set(warm), timeout=30)
            for turn in range(cfg.latency_runs):
                for label, send in ((OURS, send_ours), (POST, send_base)):
                    returned = steady.run(cfg.latency_seconds, send)
                    arrived = receiver.collect(set(returned), timeout=60)
                    started = min(returned.values())
                    for seq, at in sorted(returned.items()):
                        ms = (arrived[seq] - at) * 1000
                        latencies[label].append(ms)
                        if ms > SLOW_MS:
                            slow[label].append((turn, round(at - started, 3), round(ms, 2)))
        finally:
            client.close()
            stack.stop_worker(ours)
            stack.stop_worker(base)
    figures = {label: Percentiles.of(values) for label, values in latencies.items()}
    for label, p in figures.items():
        result.add_row(
            label, p.count, f"{p.p50:.2f}", f"{p.p90:.2f}", f"{p.p99:.2f}", f"{p.max:.1f}", p.slow
        )
    stalls = {label: _stalls(values) for label, values in slow.items()}
    result.notes += [
        f"{cfg.latency_rate:g} messages/s for {cfg.latency_seconds:g} s per turn, "
        f"{cfg.latency_runs} turns each, alternating; --concurrency {cfg.concurrency} for "
        "both workers, same redis-server; latency = arrival at the receiver (its own "
        "process) - the time send() returned.",
        f"stalls (deliveries over {SLOW_MS:g} ms sent within 0.5 s of each other; turn/"
        "seconds into it: count, worst ms) — ours: " + _describe(stalls[OURS]),
        "baseline: " + _describe(stalls[POST]),
    ]
    ours_p, base_p = figures[OURS], figures[POST]
    result.targets += [
        Target(
            "p99 latency at a steady rate vs the baseline's",
            "<= baseline p99",
            f"{ours_p.p99:.1f} vs {base_p.p99:.1f} ms",
            ours_p.p99 <= base_p.p99,
        ),
        Target(
            "p50 latency vs the baseline's",
            "no worse",
            f"{ours_p.p50:.2f} vs {base_p.p50:.2f} ms",
            ours_p.p50 <= base_p.p50 * 1.1,
        ),
    ]
    result.data = {
        "percentiles": {k: v.__dict__ for k, v in figures.items()},
        "stalls": stalls,
    }
    return result


def _stalls(slow: list[tuple[int, float, float]]) -> list[dict[str, float]]:
    """Slow deliveries grouped into episodes: a periodic stall shows as a pattern."""
    episodes: list[dict[str, float]] = []
    for turn, at, ms in slow:
        last = episodes[-1] if episodes else None
        if last is not None and last["turn"] == turn and at - last["last_at"] <= 0.5:
            last.update(count=last["count"] + 1, worst=max(last["worst"], ms), last_at=at)
        else:
            episodes.append({"turn": turn, "at": at, "last_at": at, "count": 1, "worst": ms})
    return episodes


def _describe(episodes: list[dict[str, float]]) -> str:
    if not episodes:
        return "none"
    shown = sorted(episodes, key=lambda e: -e["worst"])[:8]
    return ", ".join(
        f"{e['turn']:g}/{e['at']:.1f}s: {e['count']:g}, {e['worst']:.0f}" for e in shown
    ) + (f" (+{len(episodes) - len(shown)} more)" if len(episodes) > len(shown) else "")
