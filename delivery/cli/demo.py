"""``delivery demo``: the whole path on embedded defaults, against a local receiver."""

import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine, func, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery.cli import app, fail, out, user_errors
from delivery.cli.admin import write_key_file
from delivery.cli.context import channel_store, delivery_log
from delivery.engine.channels import parse_retry_schedule
from delivery.engine.crypto import generate_key, load_secret_key
from delivery.log import DeliveryLog, Outcome
from delivery.log.migrate import upgrade
from delivery.log.tables import AttemptRow
from delivery.producer.publisher import send_many
from schemas import Message, Payload, get_settings

DEMO_CHANNEL = "demo-webhook"
#: Ids per query: well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 10_000


class DemoReceiver(ThreadingHTTPServer):
    """A webhook receiver that verifies every signature and, to show retries, turns away
    the first try of every ``fail_every``-th delivery with a 503."""

    daemon_threads = True

    def __init__(self, secret: str, fail_every: int) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.verifier = Webhook(secret)
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.accepted: set[str] = set()
        self.bad_signatures = 0
        self.turned_away = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/hooks"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: DemoReceiver
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        receiver = self.server
        try:
            receiver.verifier.verify(body, dict(self.headers.items()))
        except WebhookVerificationError:
            with receiver.lock:
                receiver.bad_signatures += 1
            self._answer(401)
            return
        webhook_id = self.headers["webhook-id"]
        with receiver.lock:
            receiver.seen[webhook_id] += 1
            first_try = receiver.seen[webhook_id] == 1
            refuse = first_try and int(webhook_id.replace("-", ""), 16) % receiver.fail_every == 0
            if refuse:
                receiver.turned_away += 1
            else:
                receiver.accepted.add(webhook_id)
        self._answer(503 if refuse else 204)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _ensure_secret_key() -> None:
    settings = get_settings()
    if load_secret_key(settings) is None:
        write_key_file(settings.key_file, generate_key())
        out.print(f"no DELIVERY_SECRET_KEY set: generated one in {settings.key_file} for local use")


def _start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DELIVERY_ALLOW_PRIVATE_NETWORKS": "true"}  # the receiver is on loopback
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "delivery",
            "worker",
            "--loglevel",
            "warning",
            "--concurrency",
            str(concurrency),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: finish what it holds
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@app.command("demo")
def demo(
    count: Annotated[
        int, typer.Option("--count", min=1, max=100_000, help="Deliveries to send")
    ] = 300,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=200)] = 16,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the worker")
    ] = 180.0,
    fail_every: Annotated[
        int,
        typer.Option(
            "--fail-every",
            min=1,
            help=(
                "The receiver turns away the first try of one delivery in N with a 503 "
                "(ten failures in a row open the channel's circuit breaker)"
            ),
        ),
    ] = 20,
) -> None:
    """Start a local webhook receiver and a worker, send deliveries, and summarise the log."""
    settings = get_settings()
    with user_errors():
        upgrade(settings.resolved_database_url)
        _ensure_secret_key()
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        channel_store().add(
            DEMO_CHANNEL,
            "webhook",
            {"secret": secret, "timeout": 5},
            retry_schedule=parse_retry_schedule("0,1,2,4"),
            replace=True,
        )
    receiver = DemoReceiver(secret, fail_every=fail_every)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    worker = _start_worker(concurrency)
    log = delivery_log()
    run = secrets.token_hex(4)
    try:
        started = time.monotonic()
        with user_errors():
            receipts = send_many(
                Message(
                    channel=DEMO_CHANNEL,
                    address=receiver.url,
                    payload=Payload(
                        message=f"Order {i} has shipped",
                        subject="Shipping update",
                        data={"order": i},
                    ),
                    idempotency_key=f"demo-{run}-{i}",
                )
                for i in range(count)
            )
        enqueued = time.monotonic() - started
        ids = [r.id for r in receipts]
        counts = _wait(log, ids, worker, timeout)
        elapsed = time.monotonic() - started
    finally:
        _stop_worker(worker)
        receiver.shutdown()
        receiver.server_close()
    attempts = _attempts_by_outcome(log.engine, ids)
    _summarise(counts, attempts, receiver, count, enqueued, elapsed, ids[0])


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _count_by_status(log: DeliveryLog, ids: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for chunk in _chunks(ids):
        counts.update(log.count_by_status(chunk))
    return counts


def _attempts_by_outcome(engine: Engine, ids: Sequence[str]) -> Counter[str]:
    """Every attempt the log recorded for these deliveries, by how it ended."""
    counts: Counter[str] = Counter()
    with engine.connect() as connection:
        for chunk in _chunks(ids):
            query = (
                select(AttemptRow.outcome, func.count())
                .where(AttemptRow.delivery_id.in_(chunk))
                .group_by(AttemptRow.outcome)
            )
            counts.update(dict(connection.execute(query).all()))
    return counts


def _wait(
    log: DeliveryLog, ids: list[str], worker: subprocess.Popen[bytes], timeout: float
) -> Counter[str]:
    columns = (TextColumn("delivering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    counts: Counter[str] = Counter()
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("deliveries", total=len(ids))
        while time.monotonic() < deadline:
            counts = _count_by_status(log, ids)
            finished = counts.get("delivered", 0) + counts.get("failed", 0)
            progress.update(task, completed=finished)
            if finished == len(ids):
                break
            if worker.poll() is not None:
                fail(
                    f"the worker exited with code {worker.returncode}; "
                    "run `delivery worker` to see why"
                )
            time.sleep(0.25)
    return counts


def _summarise(
    counts: Counter[str],
    attempts: Counter[str],
    receiver: DemoReceiver,
    count: int,
    enqueued: float,
    elapsed: float,
    example: str,
) -> None:
    # Read back from the log, beside what the receiver saw: the two should agree.
    table = Table(title=f"{count} deliveries: the log beside the receiver")
    table.add_column("figure")
    table.add_column("delivery log", justify="right")
    table.add_column("receiver", justify="right")
    for status in ("delivered", "retrying", "sending", "queued", "failed"):
        if counts.get(status) or status == "delivered":
            accepted = str(len(receiver.accepted)) if status == "delivered" else ""
            table.add_row(status, str(counts.get(status, 0)), accepted)
    unseen = count - sum(counts.values())
    if unseen:
        table.add_row("not yet seen by a worker", str(unseen), "")
    requests = sum(receiver.seen.values())
    table.add_row("attempts (requests)", str(attempts.total()), str(requests))
    retries = attempts.get(Outcome.RETRY, 0)
    table.add_row("retries (503, then sent again)", str(retries), str(receiver.turned_away))
    table.add_row("bad signatures", "", str(receiver.bad_signatures))
    out.print(table)
    out.print(
        f"{count} deliveries in {elapsed:.1f} s, worker start-up included "
        f"(enqueued in {enqueued:.2f} s)."
    )
    out.print("A short run, not a throughput figure: see bench/ (docs/performance.md).")
    out.print(f"look one up: [bold]delivery status {example}[/]")
    out.print("recent ones: [bold]delivery log[/]")
    if counts.get("delivered", 0) != count:
        raise typer.Exit(1)
