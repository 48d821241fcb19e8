"""3. Per-delivery overhead: where a delivery's time goes inside the worker.

The delivery task (``workers.tasks.deliver``, the function Celery runs) is called in this
process, against the real receiver and a real log, without the broker in between:

* timers around the service's steps give claim / channel lookup / dispatch / record / the
  rest, per delivery, on one thread and on as many threads as the worker runs;
* SQLAlchemy's cursor events count and time every statement (``BEGIN IMMEDIATE`` on
  SQLite is where threads queue for the write lock);
* pyinstrument profiles a single-threaded pass, and its frames are summed by layer
  (SQL driver, SQLAlchemy, HTTP client, pydantic, Celery, our code, the rest).

Each of this is done with the log on SQLite and on PostgreSQL.
"""

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from bench.context import BenchContext, payload
from bench.report import SectionResult
from bench.stack import delivery_stack

TITLE = "3. Per-delivery overhead inside the worker (task called in-process, no broker)"

PHASES = ("claim", "channel lookup", "dispatch (sign + POST)", "record", "rest of the task")
LAYERS = (
    "SQL driver (sqlite3/psycopg, lock waits)",
    "SQLAlchemy (build, compile, ORM)",
    "HTTP client (requests, urllib3, socket)",
    "pydantic",
    "Celery task call",
    "signing (standardwebhooks, hmac)",
    "delivery/, workers/, schemas/",
    "other (stdlib: json, datetime, uuid, logging...)",
)


class _Timers:
    """Summed wall time per phase, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[str, float] = defaultdict(float)

    def add(self, phase: str, seconds: float) -> None:
        with self.lock:
            self.totals[phase] += seconds

    def wrap(self, phase: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - started)

        return timed

    def reset(self) -> None:
        with self.lock:
            self.totals.clear()


class _SqlCounter:
    """Statements per delivery by kind, and time spent in each kind (cursor events)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.engine = engine
        self.lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._local.started = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        elapsed = time.perf_counter() - self._local.started
        kind = (
            " ".join(statement.split()[:2]).upper()
            if statement.startswith("BEGIN")
            else (statement.split(None, 1)[0].upper())
        )
        with self.lock:
            self.counts[kind] += 1
            self.seconds[kind] += elapsed

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.seconds.clear()

    def close(self) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


def _envelopes(channel: str, url: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "schema_version": 1,
            "id": str(uuid.uuid4()),
            "channel": channel,
            "address": url,
            "payload": payload(i),
        }
        for i in range(count)
    ]


@contextmanager
def _instrumented(channel: str) -> Iterator[tuple[Callable[[Any], Any], _Timers, _SqlCounter]]:
    """The task function with timers around the service's steps (this process only)."""
    from workers import tasks

    service = tasks.get_service()
    timers = _Timers()
    log = service.log
    dispatchers = service.dispatchers
    setattr(log, "claim", timers.wrap("claim", log.claim))  # noqa: B010 - instance only
    # The service records through finish_many (a batch of one for a single delivery).
    setattr(log, "finish_many", timers.wrap("record", log.finish_many))  # noqa: B010
    setattr(dispatchers, "get", timers.wrap("channel lookup", dispatchers.get))  # noqa: B010
    _, dispatcher = dispatchers.get(channel)
    setattr(dispatcher, "send", timers.wrap("dispatch (sign + POST)", dispatcher.send))  # noqa: B010
    # The channel cache would rebuild the dispatcher after its TTL; keep this one.
    dispatchers.ttl = float("inf")
    sql = _SqlCounter(log.engine)

    def task(envelope: Any) -> Any:
        started = time.perf_counter()
        try:
            return tasks.deliver(envelope)
        finally:
            timers.add("task", time.perf_counter() - started)

    try:
        yield task, timers, sql
    finally:
        sql.close()
        tasks.close_service()


def _pass(task: Callable[[Any], Any], envelopes: list[dict[str, Any]], threads: int) -> float:
    """Seconds to deliver every envelope on ``threads`` threads.

    Raises:
        RuntimeError: not every delivery came back delivered (the figures would lie).
    """
    started = time.perf_counter()
    if threads == 1:
        outcomes = [task(envelope) for envelope in envelopes]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            outcomes = list(pool.map(task, envelopes))
    elapsed = time.perf_counter() - started
    undelivered = Counter(str(o) for o in outcomes if o != "delivered")
    if undelivered:
        raise RuntimeError(f"not every delivery was delivered: {dict(undelivered)}")
    return elapsed


def _batched_pass(envelopes: list[dict[str, Any]], threads: int, size: int) -> float:
    """Seconds to deliver every envelope through ``deliver_batch`` in batches of ``size``.

    Raises:
        RuntimeError: not every delivery came back delivered.
    """
    from workers import tasks

    chunks = [envelopes[i : i + size] for i in range(0, len(envelopes), size)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tallies = list(pool.map(tasks.deliver_batch, chunks))
    elapsed = time.perf_counter() - started
    delivered = sum(int(t.split()[0]) for t in tallies if t.endswith(" delivered"))
    if delivered != len(envelopes):
        raise RuntimeError(f"not every batched delivery was delivered: {tallies[:5]}")
    return elapsed


#: C functions (pyinstrument shows them as ``<built-in>``) that belong to a layer of their
#: own; any other C function counts towards the layer of the Python code that called it.
_BUILTIN_LAYERS = (
    (("Cursor.", "Connection.commit", "Connection.rollback", "PGconn", "PGresult"), LAYERS[0]),
    (("socket.", "SSLSocket.", "select.", "poll."), LAYERS[2]),
    (("HMAC", "hmac", "openssl_"), LAYERS[5]),
)


def _layer(frame: Any, parent: str) -> str:
    path = (frame.file_path or "").replace("\\", "/")
    function = frame.function or ""
    if path.startswith("<built-in>") or not path:
        for prefixes, layer in _BUILTIN_LAYERS:
            if function.startswith(prefixes):
                return layer
        return parent
    if "/sqlalchemy/" in path:
        if function.startswith(("do_execute", "do_commit", "do_rollback", "do_begin")):
            return LAYERS[0]
        return LAYERS[1]
    if "/psycopg" in path or "/sqlite3/" in path:
        return LAYERS[0]
    if any(s in path for s in ("/requests/", "/urllib3/", "/http/", "/socket.py", "/email/")):
        return LAYERS[2]
    if "/pydantic" in path:
        return LAYERS[3]
    if any(s in path for s in ("/celery/", "/kombu/", "/vine/")):
        return LAYERS[4]
    if "/standardwebhooks/" in path or path.endswith(("/hmac.py", "/base64.py")):
        return LAYERS[5]
    if "site-packages" not in path and any(
        f"/{pkg}/" in path for pkg in ("delivery", "workers", "schemas")
    ):
        return LAYERS[6]
    return LAYERS[7]


def _layers(session: Any) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self time summed by layer, and the functions with the most self time."""
    by_layer: dict[str, float] = defaultdict(float)
    by_function: dict[str, float] = defaultdict(float)
    root = session.root_frame()
    stack: list[tuple[Any, str]] = [(root, LAYERS[7])] if root is not None else []
    while stack:
        frame, parent = stack.pop()
        layer = parent if frame.is_synthetic else _layer(frame, parent)
        stack.extend((child, layer) for child in frame.children)
        if frame.is_synthetic:
            continue
        own = frame.total_self_time
        by_layer[layer] += own
        by_function[f"{frame.function} ({frame.file_path_short}:{frame.line_no})"] += own
    top = sorted(by_function.items(), key=lambda kv: kv[1], reverse=True)[:10]
    return dict(by_layer), top


def _profile(
    ctx: BenchContext, label: str, task: Callable[[Any], Any], envelopes: list[dict[str, Any]]
) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    elapsed = _pass(task, envelopes, 1)
    session = profiler.stop()
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    slug = label.split()[0].lower()
    (ctx.results_dir / f"profile-{slug}.txt").write_text(
        profiler.output_text(unicode=True, color=False, show_all=False)
    )
    (ctx.results_dir / f"profile-{slug}.html").write_text(profiler.output_html())
    layers, top = _layers(session)
    return layers, top, elapsed


def _measure(ctx: BenchContext, label: str, database_url: str) -> dict[str, Any]:
    cfg = ctx.config
    count = cfg.overhead_deliveries
    url = ctx.receiver.url("/overhead")
    found: dict[str, Any] = {"database": label}
    with delivery_stack(
        ctx.processes,
        ctx.workdir / f"overhead-{label.split()[0].lower()}",
        broker_url="memory://",
        database_url=database_url,
        queue="bench-overhead",
    ) as stack:
        channel = stack.add_channel("overhead")
        batch_size = _batch_size()
        with _instrumented(channel) as (task, timers, sql):
            _pass(task, _envelopes(channel, url, 100), 1)  # warm up
            for threads in (1, cfg.concurrency):
                timers.reset()
                sql.reset()
                elapsed = _pass(task, _envelopes(channel, url, count), threads)
                phases = {k: v * 1000 / count for k, v in timers.totals.items()}
                phases["rest of the task"] = phases.pop("task") - sum(
                    phases.get(p, 0.0) for p in PHASES[:-1]
                )
                found[f"threads={threads}"] = {
                    "rate": count / elapsed,
                    "phases_ms": phases,
                    "statements": {k: v / count for k, v in sql.counts.items()},
                    "statement_ms": {k: v * 1000 / count for k, v in sql.seconds.items()},
                    "batched_rate": count
                    / _batched_pass(_envelopes(channel, url, count), threads, batch_size),
                }
            layers, top, elapsed = _profile(ctx, label, task, _envelopes(channel, url, count))
        total = sum(layers.values())
        found["profile"] = {
            "rate": count / elapsed,
            "layers_ms": {k: v * 1000 / count for k, v in layers.items()},
            "layers_share": {k: v / total for k, v in layers.items()},
            "top_functions_ms": [(name, t * 1000 / count) for name, t in top],
        }
    return found


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    many = f"threads={cfg.concurrency}"
    found: list[dict[str, Any]] = [_measure(ctx, "SQLite", ctx.sqlite_url("overhead"))]
    notes: list[str] = []
    try:
        found.append(_measure(ctx, "PostgreSQL", ctx.postgres_url("bench_overhead")))
    except Exception as exc:
        notes.append(f"PostgreSQL skipped: {type(exc).__name__}: {exc}")
    columns = ["ms per delivery"]
    for f in found:
        columns += [f"{f['database']} 1 thread", f"{f['database']} {cfg.concurrency} threads"]
    result = SectionResult("overhead", TITLE, columns)
    for phase in PHASES:
        row = [phase]
        for f in found:
            row += [f"{f['threads=1']['phases_ms'].get(phase, 0.0):.2f}"]
            row += [f"{f[many]['phases_ms'].get(phase, 0.0):.2f}"]
        result.add_row(*row)
    _add_rates(result, found, many)
    kinds = sorted({k for f in found for k in f["threads=1"]["statements"]})
    for kind in kinds:
        row = [f"SQL {kind}: count, ms"]
        for f in found:
            for key in ("threads=1", many):
                n = f[key]["statements"].get(kind, 0.0)
                ms = f[key]["statement_ms"].get(kind, 0.0)
                row.append(f"{n:.1f}, {ms:.2f}" if n else "-")
        result.add_row(*row)
    result.add_row(*([""] * len(columns)))
    result.add_row(
        *(["[bold]profile, 1 thread: self time by layer[/]"] + [""] * (len(columns) - 1))
    )
    for layer in LAYERS:
        row = [layer]
        for f in found:
            ms = f["profile"]["layers_ms"].get(layer, 0.0)
            share = f["profile"]["layers_share"].get(layer, 0.0)
            row += [f"{ms:.2f} ({share:.0%})", ""]
        result.add_row(*row)
    for f in found:
        top = "; ".join(f"{name} {ms:.2f}" for name, ms in f["profile"]["top_functions_ms"][:5])
        notes.append(f"{f['database']} hottest functions (self ms/delivery): {top}")
    notes += [
        f"{cfg.overhead_deliveries} deliveries per pass; phases are wall time per delivery, so "
        f"with {cfg.concurrency} threads they include waiting for the GIL and for locks.",
        "'rest of the task' is the task body outside the timed steps: envelope validation, "
        "Celery's task call, the attempt bookkeeping.",
        "phases, SQL and profile are for delivery.deliver, one delivery per task (the path of "
        "delivery.send and retries); the batched row runs delivery.deliver_batch on the "
        "same kind of envelopes (what send_many publishes): one claim and one record "
        "transaction per batch.",
        f"full profiles: {ctx.results_dir}/profile-sqlite.{{txt,html}} and profile-postgresql.*.",
    ]
    result.notes = notes
    result.data = {"measurements": found}
    return result


def _add_rates(result: SectionResult, found: list[dict[str, Any]], many: str) -> None:
    row = ["[bold]deliveries/s[/]"]
    for f in found:
        row += [f"[bold]{f['threads=1']['rate']:,.0f}[/]", f"[bold]{f[many]['rate']:,.0f}[/]"]
    result.add_row(*row)
    row = [f"deliveries/s in batches of {_batch_size()} (deliver_batch)"]
    for f in found:
        row += [f"{f['threads=1']['batched_rate']:,.0f}", f"{f[many]['batched_rate']:,.0f}"]
    result.add_row(*row)


def _batch_size() -> int:
    from schemas import get_settings

    return get_settings().batch_size
