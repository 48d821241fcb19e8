"""/readyz and /metrics: read from the log's counts, the log and the broker at scrape time."""

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from delivery.clock import utcnow
from delivery.log import AttemptResult, Outcome
from schemas import Envelope, Payload
from tests.api.conftest import Api
from tests.support.recording import finish


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_the_log_holds(api: Api) -> None:
    # Given three deliveries: one delivered in 30 ms, one failed in 2 s, one waiting
    log = api.app.state.api.log
    started = utcnow() - timedelta(minutes=1)
    for i, (outcome, ms) in enumerate([(Outcome.DELIVERED, 30.0), (Outcome.FAILED, 2000.0)]):
        env = Envelope(id=f"m-{i}", channel="hooks", address="a", payload=Payload(message="m"))
        claim = log.claim(env, lease=30)
        finish(
            log,
            claim,
            AttemptResult(outcome, started, ms, error=None),
            dispatcher="webhook",
            worker="w",
        )
    waiting = Envelope(
        id="m-w",
        channel="hooks",
        address="a",
        payload=Payload(message="m"),
        not_before=utcnow() + timedelta(hours=1),
    )
    log.claim(waiting, lease=30, now=utcnow() - timedelta(seconds=90))
    api.get("/healthz")

    # When Prometheus scrapes
    samples = _samples(api.get("/metrics", key=None).text)

    # Then the figures are the log's
    assert samples[("delivery_log_up", ())] == 1
    ended = "delivery_deliveries_ended_total"
    assert samples[(ended, (("channel", "hooks"), ("status", "delivered")))] == 1
    assert samples[(ended, (("channel", "hooks"), ("status", "failed")))] == 1
    # what is waiting is a gauge of the deliveries not yet ended
    assert samples[("delivery_deliveries", (("channel", "hooks"), ("status", "retrying")))] == 1
    assert ("delivery_deliveries", (("channel", "hooks"), ("status", "delivered"))) not in samples
    assert samples[("delivery_attempts_total", (("outcome", "delivered"),))] == 1
    bucket = "delivery_attempt_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.025"), ("outcome", "delivered")))] == 0
    assert samples[(bucket, (("le", "0.05"), ("outcome", "delivered")))] == 1
    assert samples[(bucket, (("le", "1.0"), ("outcome", "failed")))] == 0
    assert samples[(bucket, (("le", "2.5"), ("outcome", "failed")))] == 1
    assert samples[("delivery_oldest_waiting_seconds", ())] >= 90
    assert samples[("delivery_channel_breaker_open", (("channel", "hooks"),))] == 0
    # the in-memory broker cannot say how deep it is, but it answers
    assert samples[("delivery_broker_up", ())] == 1
    # and the API's own requests, labelled by route template
    key = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples[("delivery_api_requests_total", key)] >= 1


def test_readyz_is_503_when_the_log_is_not_migrated(api: Api, tmp_path) -> None:
    from delivery.api import create_app
    from schemas import Settings
    from tests.support.uvicorn_server import serving

    assert api.get("/readyz", key=None).json()["checks"] == {"broker": "ok", "log": "ok"}
    fresh = Settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}", broker_url="memory://")
    import requests

    with serving(create_app(fresh)) as url:
        r = requests.get(url + "/readyz", timeout=10)
    assert r.status_code == 503
    assert "delivery db upgrade" in r.json()["checks"]["log"]


def test_request_labels_are_bounded_whatever_clients_send(api: Api) -> None:
    # Issue 27: made-up paths and methods must not each make a series of their own.
    for i in range(5):
        api.get(f"/no/such/path/{i}", key=None)
        api.request(f"BREW{i}", "/healthz", key=None)
    api.get("/v1/deliveries/some-id")  # a known route: its template, never the id
    samples = _samples(api.get("/metrics", key=None).text)
    labels = {
        dict(key)["route"]: dict(key)["method"]
        for (name, key) in samples
        if name == "delivery_api_requests_total"
    }
    methods = {
        dict(key)["method"] for (name, key) in samples if name == "delivery_api_requests_total"
    }
    assert "unmatched" in labels and not any(r.startswith("/no/") for r in labels)
    assert "/v1/deliveries/{delivery_id}" in labels and "some-id" not in str(labels)
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


def test_channels_nobody_configured_are_one_label(api: Api) -> None:
    # Given malformed messages naming made-up channels, recorded as failed
    log = api.app.state.api.log
    for i in range(5):
        log.reject(f"bad-{i}", channel=f"made-up-{i}", address="a", reason="no such channel")
    # Then a scrape shows them under one channel label, "-", not five new series
    samples = _samples(api.get("/metrics", key=None).text)
    channels = {dict(key).get("channel") for (name, key) in samples if name.startswith("delivery_")}
    assert not any(str(c).startswith("made-up") for c in channels)
    assert (
        samples[("delivery_deliveries_ended_total", (("channel", "-"), ("status", "failed")))] == 5
    )
