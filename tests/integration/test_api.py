"""``delivery serve`` for real: a uvicorn process on loopback, redis-server, a worker
process and a webhook receiver; what goes in over HTTP comes out at the receiver."""

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from delivery.api.keys import KeyStore
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver
from tests.support.servers import free_port, wait_for_port

pytestmark = pytest.mark.integration


class ApiProcess:
    """A real ``delivery serve`` (or ``uvicorn delivery.api:app``) process."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        via_uvicorn: bool = False,
        workers: int = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve = ["-m", "delivery", "serve", "--port", str(self.port), "--log-level", "warning"]
        serve += ["--workers", str(workers)]
        uvicorn = ["-m", "uvicorn", "delivery.api:app", "--port", str(self.port)]
        self._log = log_path.open("ab")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, *(uvicorn if via_uvicorn else serve)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the API did not start:\n{self.output()[-3000:]}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextmanager
def api_process(env: dict[str, str], log_path: Path, **kw: Any) -> Iterator[ApiProcess]:
    process = ApiProcess(env, log_path, **kw)
    try:
        yield process
    finally:
        process.stop()


def _key(stack: Stack, name: str = "tests", **kind: bool) -> dict[str, str]:
    _, key = KeyStore(stack.log.engine).add(name, **kind)
    return {"Authorization": f"Bearer {key}"}


def _doc(receiver: Receiver, i: int, **changes: object) -> dict[str, object]:
    return {
        "channel": "hooks",
        "address": receiver.url("/in"),
        "payload": {"message": f"m{i}", "data": {"i": i}},
        **changes,
    }


def _wait_status(
    url: str, headers: dict[str, str], delivery_id: str, status: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/v1/deliveries/{delivery_id}", headers=headers, timeout=10)
        if r.status_code == 200:
            doc = r.json()
            if doc["status"] == status:
                return doc
        time.sleep(0.1)
    raise TimeoutError(f"{delivery_id} never reached {status}: {doc}")


def test_sent_over_http_delivered_and_read_back(redis_stack: Stack) -> None:
    # Given the whole stack: API process, worker process, webhook channel and receiver
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    headers = _key(redis_stack)
    redis_stack.worker()
    with (
        Receiver(secret) as receiver,
        api_process(redis_stack.env, redis_stack.tmp_path / "api.log") as api,
    ):
        # When a service posts one delivery and a batch
        one = requests.post(
            f"{api.url}/v1/deliveries",
            json=_doc(receiver, 0),
            headers={**headers, "Idempotency-Key": "order-1"},
            timeout=10,
        )
        assert one.status_code == 202, one.text
        batch = requests.post(
            f"{api.url}/v1/deliveries/batch",
            json={"messages": [_doc(receiver, i) for i in range(1, 11)]},
            headers=headers,
            timeout=10,
        )
        assert batch.status_code == 202, batch.text
        ids = [one.json()["id"], *batch.json()["ids"]]
        # Then every one is delivered, once, and reads back as `delivery status --json`
        assert redis_stack.wait_until(ids, {"delivered"}) == {"delivered": 11}
        doc = _wait_status(api.url, headers, ids[0], "delivered")
        assert doc["idempotency_key"] == "order-1"
        assert [a["outcome"] for a in doc["attempts"]] == ["delivered"]
        assert sorted(r.headers["webhook-id"] for r in receiver.wait_for(11, "/in")) == sorted(ids)
        # the same key again is the same delivery, not a second one
        again = requests.post(
            f"{api.url}/v1/deliveries",
            json=_doc(receiver, 0, idempotency_key="order-1"),
            headers=headers,
            timeout=10,
        )
        assert again.json()["id"] == ids[0]
        # cancelling what was sent is a conflict
        late = requests.post(
            f"{api.url}/v1/deliveries/{ids[1]}/cancel", headers=headers, timeout=10
        )
        assert late.status_code == 409
        assert "too late" in late.json()["detail"]
        # and the errors are what they say
        assert requests.get(f"{api.url}/v1/deliveries", timeout=10).status_code == 401
        bad = requests.post(
            f"{api.url}/v1/deliveries", json=_doc(receiver, 0, channel=""), headers=headers
        )
        assert bad.status_code == 422 and bad.json()["errors"][0].startswith("channel:")
        huge = requests.post(
            f"{api.url}/v1/deliveries", data=b"x" * (2 << 20), headers=headers, timeout=10
        )
        assert huge.status_code == 413
        metrics = requests.get(f"{api.url}/metrics", timeout=10).text
        assert 'delivery_deliveries_ended_total{channel="hooks",status="delivered"} 11.0' in metrics
        assert 'delivery_queue_messages{queue="delivery",state="ready"}' in metrics
        assert requests.get(f"{api.url}/readyz", timeout=10).status_code == 200
        assert api.process.poll() is None
    key = headers["Authorization"].split()[1]
    assert key.split("_", 2)[2] not in api.output()


def test_a_delivery_cancelled_while_in_the_broker_is_never_sent(redis_stack: Stack) -> None:
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    headers = _key(redis_stack)
    with (
        Receiver(secret) as receiver,
        api_process(redis_stack.env, redis_stack.tmp_path / "api.log") as api,
    ):
        # Given a delivery waiting in the broker, no worker running yet
        r = requests.post(
            f"{api.url}/v1/deliveries",
            json=_doc(receiver, 0, countdown=6),
            headers=headers,
            timeout=10,
        )
        delivery_id = r.json()["id"]
        # When it is cancelled before it is due
        cancel = requests.post(
            f"{api.url}/v1/deliveries/{delivery_id}/cancel", headers=headers, timeout=10
        )
        assert cancel.status_code == 200, cancel.text
        # Then the worker that takes the message skips it: nothing reaches the receiver.
        # (Started only now: a worker already running could claim it before the cancel,
        # as deferred, and end it silently as cancelled afterwards; the promise holds
        # either way, but only this order shows the skip.)
        worker = redis_stack.worker()
        deadline = time.monotonic() + 30
        while f"delivery {delivery_id} is already cancelled" not in worker.output():
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.1)
        assert receiver.received == []
        assert _wait_status(api.url, headers, delivery_id, "cancelled")["attempts"] == []


def test_broker_down_and_log_down_are_503_with_a_message(redis_stack: Stack) -> None:
    redis_stack.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    headers = _key(redis_stack)
    closed = free_port()
    no_broker = {
        **redis_stack.env,
        "DELIVERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
        "DELIVERY_PUBLISH_TIMEOUT": "1",
    }
    no_log = {
        **redis_stack.env,
        "DELIVERY_DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{closed}/none",
    }
    message = {"channel": "hooks", "address": "https://x.example/", "payload": {"message": "m"}}
    with api_process(no_broker, redis_stack.tmp_path / "api-1.log", via_uvicorn=True) as api:
        r = requests.post(f"{api.url}/v1/deliveries", json=message, headers=headers, timeout=30)
        assert r.status_code == 503
        assert "message queue is unavailable" in r.json()["detail"]
        assert r.headers["Retry-After"]
        ready = requests.get(f"{api.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"
        assert "delivery_broker_up 0.0" in requests.get(f"{api.url}/metrics", timeout=30).text
        assert "Traceback" not in api.output()
    with api_process(no_log, redis_stack.tmp_path / "api-2.log", via_uvicorn=True) as api:
        for method, path in (("GET", "/v1/deliveries"), ("POST", "/v1/deliveries")):
            r = requests.request(method, api.url + path, json=message, headers=headers, timeout=30)
            assert r.status_code == 503, r.text
            assert "delivery log is unavailable" in r.json()["detail"]
        ready = requests.get(f"{api.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["log"] == "unreachable"
        assert "delivery_log_up 0.0" in requests.get(f"{api.url}/metrics", timeout=30).text
        assert "Traceback" not in api.output()


def test_200_concurrent_clients_lose_nothing(redis_stack: Stack) -> None:
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    headers = _key(redis_stack)
    redis_stack.worker()
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    # One key sends far more than a team's limit (3,000 a minute) here: no limit.
    env = {**redis_stack.env, "DELIVERY_API_RATE_LIMIT": "0"}
    with (
        Receiver(secret) as receiver,
        api_process(env, redis_stack.tmp_path / "api.log") as api,
    ):
        stop = time.monotonic() + 3.0

        def client(n: int) -> None:
            with requests.Session() as session:
                i = 0
                while i == 0 or time.monotonic() < stop:  # each posts at least once
                    r = session.post(
                        f"{api.url}/v1/deliveries",
                        json=_doc(receiver, i, idempotency_key=f"c{n}-{i}"),
                        headers=headers,
                        timeout=60,
                    )
                    with lock:
                        (accepted if r.status_code == 202 else refused).append(
                            r.json()["id"] if r.status_code == 202 else r.text
                        )
                    i += 1

        # When 200 clients post at once for a few seconds
        threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Then every request was accepted, and every accepted id ends delivered, once
        assert refused == []
        assert len(set(accepted)) == len(accepted) >= 200
        counts = redis_stack.wait_until(accepted, {"delivered"}, timeout=180)
        assert counts == {"delivered": len(accepted)}
        by_id = receiver.count_by_id()
        assert sorted(by_id) == sorted(accepted)


def test_several_server_processes_add_up_their_request_metrics(redis_stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    redis_stack.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    headers = _key(redis_stack)
    message = {"channel": "hooks", "address": "https://x.example/", "payload": {"message": "m"}}
    with api_process(redis_stack.env, redis_stack.tmp_path / "api.log", workers=2) as api:
        # Each request on a new connection, so both processes take some
        for _ in range(20):
            r = requests.post(f"{api.url}/v1/deliveries", json=message, headers=headers, timeout=30)
            assert r.status_code == 202
        text = requests.get(f"{api.url}/metrics", timeout=30).text
    accepted = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "delivery_api_requests_total"
        and s.labels == {"method": "POST", "route": "/v1/deliveries", "status": "202"}
    ]
    # Whichever process answered the scrape, it counts every process's requests
    assert accepted == [20.0]
    # and the queue depth is the broker's, not a process's
    assert 'delivery_queue_messages{queue="delivery",state="ready"} 20.0' in text


def test_teams_own_what_they_send_and_a_test_key_calls_no_provider(redis_stack: Stack) -> None:
    # Given the whole stack, and three keys: two teams and one team's CI
    secret = webhook_secret()
    redis_stack.channels.add("hooks", "webhook", {"secret": secret, "timeout": 5})
    billing, shop = _key(redis_stack, "billing"), _key(redis_stack, "shop")
    ci = _key(redis_stack, "billing-ci", test=True)
    redis_stack.worker()
    with (
        Receiver(secret) as receiver,
        api_process(redis_stack.env, redis_stack.tmp_path / "api.log") as api,
    ):

        def post(headers: dict[str, str], doc: dict[str, object]) -> requests.Response:
            return requests.post(f"{api.url}/v1/deliveries", json=doc, headers=headers, timeout=10)

        # When both teams send their own order-42, and CI sends one with its test key
        order = {"Idempotency-Key": "order-42"}
        mine = post({**billing, **order}, _doc(receiver, 1)).json()["id"]
        theirs = post({**shop, **order}, _doc(receiver, 2)).json()["id"]
        test = post(ci, _doc(receiver, 3)).json()["id"]
        # Then they are three deliveries, all delivered, and only two reached the receiver
        assert len({mine, theirs, test}) == 3
        assert redis_stack.wait_until([mine, theirs, test], {"delivered"}) == {"delivered": 3}
        assert sorted(r.headers["webhook-id"] for r in receiver.wait_for(2, "/in")) == sorted(
            [mine, theirs]
        )
        tested = _wait_status(api.url, ci, test, "delivered")
        assert tested["test"] is True and tested["attempts"][0]["detail"] == {"test": True}
        # and one team cannot read, retry or cancel the other's
        for method, path in [
            ("GET", f"/v1/deliveries/{mine}"),
            ("POST", f"/v1/deliveries/{mine}/retry"),
            ("POST", f"/v1/deliveries/{mine}/cancel"),
        ]:
            r = requests.request(method, api.url + path, headers=shop, timeout=10)
            assert r.status_code == 404, (method, path, r.text)
        listed = requests.get(f"{api.url}/v1/deliveries", headers=shop, timeout=10).json()
        assert [d["id"] for d in listed["deliveries"]] == [theirs]
        # and what a worker would only fail is refused at once, naming it
        unknown = post(billing, _doc(receiver, 4, channel="no-such-channel"))
        assert unknown.status_code == 422 and "no-such-channel" in unknown.json()["detail"]
        assert receiver.received[2:] == []


def test_the_rate_limit_is_one_per_key_across_api_processes(redis_stack: Stack) -> None:
    # 6 a minute with a burst of ten seconds' worth: two requests at once, then 429,
    # whichever of the two processes answers (the pace is kept in Redis)
    headers = _key(redis_stack, "billing")
    env = {**redis_stack.env, "DELIVERY_API_RATE_LIMIT": "6"}
    with api_process(env, redis_stack.tmp_path / "api.log", workers=2) as api:
        # each request on a new connection, so both processes take some
        codes = [
            requests.get(f"{api.url}/v1/deliveries", headers=headers, timeout=10).status_code
            for _ in range(6)
        ]
        limited = requests.get(f"{api.url}/v1/deliveries", headers=headers, timeout=10)
    assert sorted(codes) == [200, 200, 429, 429, 429, 429]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
