"""8. HTTP ingest: ``POST /v1/deliveries`` (one at a time, and from concurrent clients) and
``POST /v1/deliveries/batch`` against ``delivery.send`` and ``send_many`` in the same run.

All publish to the same redis-server, to a queue no worker reads (emptied and counted
after each measurement). The API is one uvicorn process (``uvicorn delivery.api:app``,
access log off), its key checked on every request, SQLite for the key table.
"""

import base64
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.context import BenchContext, payload
from bench.processes import free_port, wait_for_port
from bench.report import SectionResult, Spread
from bench.sections.producer import ADDRESS, CHANNEL, SINK, _empty_sink, _producer_env

TITLE = "8. HTTP ingest (delivery serve → redis-server; nobody consumes)"

SEND = "delivery.send (one call per message)"
SEND_MANY = "delivery.send_many (one call)"
HTTP_ONE = "POST /v1/deliveries, 1 client (keep-alive)"
HTTP_MANY = "POST /v1/deliveries, {n} concurrent clients"
HTTP_BATCH = "POST /v1/deliveries/batch, {size} per request"
#: Concurrent HTTP clients, and messages per batch request.
CLIENTS = 16
BATCH_SIZE = 500


def _doc(i: int) -> dict[str, Any]:
    return {"channel": CHANNEL, "address": ADDRESS, "payload": payload(i)}


class _Api:
    """The API process and a key for it."""

    def __init__(self, ctx: BenchContext) -> None:
        from delivery.api.keys import KeyStore
        from delivery.engine.assembly import assemble
        from delivery.engine.crypto import generate_key
        from delivery.log.database import get_engine
        from delivery.log.migrate import upgrade
        from schemas import Settings

        database = ctx.sqlite_url("http-ingest")
        upgrade(database)
        _, key = KeyStore(get_engine(database)).add(f"bench-{time.time_ns()}")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")},
            "DELIVERY_HOME": str(ctx.workdir / "http-ingest"),
            "DELIVERY_BROKER_URL": ctx.redis.url,
            "DELIVERY_QUEUE": SINK,
            "DELIVERY_DATABASE_URL": database,
            "DELIVERY_SECRET_KEY": generate_key(),
            # Measured: ingest itself. One key sends far more than the default limit.
            "DELIVERY_API_RATE_LIMIT": "0",
        }
        # The API refuses a channel that does not exist (the worker would fail it).
        settings = Settings(
            database_url=database,
            secret_key=env["DELIVERY_SECRET_KEY"],
            home=ctx.workdir / "http-ingest",
        )
        engine = assemble(settings)
        signing = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        engine.channels.add(CHANNEL, "webhook", {"secret": signing}, replace=True)
        engine.close()
        argv = [sys.executable, "-m", "uvicorn", "delivery.api:app", "--port", str(self.port)]
        self.child = ctx.processes.start(
            "http-ingest-api",
            [*argv, "--no-access-log", "--log-level", "warning"],
            log_path=ctx.workdir / "http-ingest-api.log",
            env=env,
        )
        wait_for_port(self.port, timeout=30)

    def single(self, count: int) -> float:
        with requests.Session() as session:
            started = time.perf_counter()
            for i in range(count):
                self._accepted(
                    session.post(f"{self.url}/v1/deliveries", json=_doc(i), headers=self.headers)
                )
            return time.perf_counter() - started

    def concurrent(self, count: int) -> float:
        share = [count // CLIENTS + (1 if n < count % CLIENTS else 0) for n in range(CLIENTS)]
        failures: list[str] = []

        def client(n: int) -> None:
            with requests.Session() as session:
                for i in range(share[n]):
                    r = session.post(
                        f"{self.url}/v1/deliveries", json=_doc(i), headers=self.headers
                    )
                    if r.status_code != 202:
                        failures.append(r.text[:200])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} requests refused: {failures[0]}")
        return seconds

    def batch(self, count: int) -> float:
        with requests.Session() as session:
            started = time.perf_counter()
            for start in range(0, count, BATCH_SIZE):
                docs = [_doc(i) for i in range(start, min(count, start + BATCH_SIZE))]
                self._accepted(
                    session.post(
                        f"{self.url}/v1/deliveries/batch",
                        json={"messages": docs},
                        headers=self.headers,
                    )
                )
            return time.perf_counter() - started

    @staticmethod
    def _accepted(response: requests.Response) -> None:
        if response.status_code != 202:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    def close(self) -> None:
        self.child.stop()


def _send(count: int) -> float:
    from delivery import send

    started = time.perf_counter()
    for i in range(count):
        send(CHANNEL, ADDRESS, payload(i))
    return time.perf_counter() - started


def _send_many(count: int) -> float:
    from delivery import send_many

    started = time.perf_counter()
    send_many(_doc(i) for i in range(count))
    return time.perf_counter() - started


def run(ctx: BenchContext) -> SectionResult:
    cfg = ctx.config
    many_label = HTTP_MANY.format(n=CLIENTS)
    batch_label = HTTP_BATCH.format(size=BATCH_SIZE)
    result = SectionResult("http", TITLE, ["producer", "messages/s", "vs send", "vs send_many"])
    rates: dict[str, list[float]] = {
        SEND: [],
        SEND_MANY: [],
        HTTP_ONE: [],
        many_label: [],
        batch_label: [],
    }
    with _producer_env(ctx.redis.url):
        api = _Api(ctx)
        plan: list[tuple[str, Callable[[int], float], int]] = [
            (SEND, _send, cfg.producer_messages),
            (SEND_MANY, _send_many, cfg.producer_batch),
            (HTTP_ONE, api.single, cfg.producer_messages),
            (many_label, api.concurrent, cfg.producer_messages),
            (batch_label, api.batch, cfg.producer_batch),
        ]
        try:
            for _, measure, _ in plan:  # warm up: connections, imports, the key cache
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
            api.close()
    for label, values in rates.items():
        vs_send = Spread.of([v / s for v, s in zip(values, rates[SEND], strict=True)])
        vs_many = Spread.of([v / m for v, m in zip(values, rates[SEND_MANY], strict=True)])
        result.add_row(
            label, Spread.of(values).format(), vs_send.format(2, "x"), vs_many.format(2, "x")
        )
    result.notes += [
        f"{cfg.producer_messages} messages per single-message loop, {cfg.producer_batch} per "
        f"send_many call and per batch run ({BATCH_SIZE} a request); {cfg.producer_runs} runs, "
        "order rotated; median (min-max); ratios within each run.",
        "HTTP figures include the client (requests, in this process), JSON both ways, the "
        "key check and validation in the API, and its publish to redis-server: one uvicorn "
        "process, access log off. A batch request is one publish, as send_many is.",
    ]
    result.data = {"rates": rates, "clients": CLIENTS, "batch_size": BATCH_SIZE}
    return result
