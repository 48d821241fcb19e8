"""How big each section's runs are: the full bench, and ``--quick`` for a CI smoke run."""

from dataclasses import dataclass, replace
from typing import Self

#: Sections in the order they run; ``--only`` and ``--skip`` take these names.
SECTIONS = (
    "e2e", "producer", "overhead", "memory", "apprise", "latency", "postgres", "http",
    "fanout", "coldstart", "outbox", "history",
)  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    #: Section 1 and 5: webhook deliveries per run.
    deliveries: int = 3000
    #: Section 1: runs of each contender; medians and ranges are over these.
    runs: int = 5
    #: Worker threads, ours and the baseline's alike (our default worker_concurrency).
    concurrency: int = 16
    #: Section 2: messages per producer measurement (send_many gets ``producer_batch``).
    producer_messages: int = 2000
    producer_batch: int = 10_000
    producer_runs: int = 5
    #: Section 2: interpreter starts per import measurement.
    import_runs: int = 5
    #: Section 3: deliveries per profiled pass.
    overhead_deliveries: int = 1500
    #: Section 4: resident memory is read after this many deliveries, then after the second.
    memory_checkpoints: tuple[int, int] = (1000, 50_000)
    #: Seconds of concurrent load when measuring the receiver's ceiling.
    ceiling_seconds: float = 3.0
    receiver_processes: int = 2
    #: Section 6: messages per second, seconds per turn, and turns of each contender.
    latency_rate: float = 100.0
    latency_seconds: float = 20.0
    latency_runs: int = 3
    #: Section 9: subscriptions of the one-event shape; events (of ``fanout_few``
    #: subscriptions each) of the many-events shape; runs of each.
    fanout_subscriptions: int = 1000
    fanout_events: int = 200
    fanout_few: int = 5
    fanout_runs: int = 3
    #: Section 10: fresh workers of each contender (one per run), and the seconds measured
    #: after each is ready (the issue's "first 2 s"); the rate is ``latency_rate``.
    coldstart_runs: int = 5
    coldstart_seconds: float = 2.0
    #: Section 12: deliveries in the full log (``--history-size``); the young log has 1,000.
    history_size: int = 1_000_000
    #: Section 1: an external receiver (``--sink``, such as nginx answering 200) instead of
    #: the bench's own; None: the bench's own, which counts requests.
    sink: str | None = None
    quick: bool = False
    #: ``--smoke``: smaller again than ``--quick``, for the test suite (sections that size
    #: their runs themselves, such as 11 and 12, read it).
    smoke: bool = False

    @classmethod
    def full(cls) -> Self:
        return cls()

    @classmethod
    def quick_run(cls) -> Self:
        """Small enough for CI (well under a minute); the figures are only a smoke check."""
        return cls(
            deliveries=300,
            runs=1,
            producer_messages=300,
            producer_batch=1000,
            producer_runs=1,
            import_runs=2,
            overhead_deliveries=150,
            memory_checkpoints=(200, 1000),
            ceiling_seconds=1.0,
            latency_seconds=2.0,
            latency_runs=1,
            fanout_subscriptions=100,
            fanout_events=20,
            fanout_runs=1,
            coldstart_runs=1,
            history_size=2000,
            quick=True,
        )

    @classmethod
    def smoke_run(cls) -> Self:
        """The quick mode made smaller again, for tests/bench/test_bench_smoke.py: every
        section still starts what it starts and prints its table, on a few dozen messages;
        the figures are not worth reading."""
        return replace(
            cls.quick_run(),
            deliveries=50,
            producer_messages=50,
            producer_batch=100,
            import_runs=1,
            overhead_deliveries=30,
            memory_checkpoints=(50, 150),
            ceiling_seconds=0.2,
            latency_seconds=0.5,
            fanout_subscriptions=10,
            fanout_events=4,
            coldstart_seconds=0.5,
            history_size=300,
            smoke=True,
        )

    def with_overrides(self, **changes: object) -> Self:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]
