"""``POST /v1/erasures`` on a real uvicorn: admin keys only, 422 naming the field."""

import pytest

from delivery.clock import utcnow
from delivery.log import AttemptResult, ClaimState, Outcome
from delivery.recipients import Preferences
from schemas import Envelope, Payload
from tests.api.conftest import Api
from tests.support.recording import finish

ANN = "ann@example.com"


def _waiting_delivery(api: Api, delivery_id: str = "d1") -> None:
    """A delivery to Ann that failed once and waits to be tried again."""
    log = api.app.state.api.log
    claim = log.claim(
        Envelope(id=delivery_id, channel="hooks", address=ANN, payload=Payload(message="hi Ann")),
        lease=60,
    )
    assert claim.state is ClaimState.CLAIMED
    finish(
        log,
        claim,
        AttemptResult(
            outcome=Outcome.RETRY,
            started_at=utcnow(),
            duration_ms=1.0,
            error=f"503 for {ANN}",
            next_attempt_at=utcnow(),
        ),
        dispatcher="webhook",
        worker="w",
    )


def test_an_admin_key_erases_and_gets_the_counts(api: Api) -> None:
    # Given a delivery to Ann waiting for a retry, and her preferences
    _waiting_delivery(api)
    Preferences(api.app.state.api.log.engine).set_rule(
        ANN, channel=None, category="marketing", enabled=False
    )
    # When an admin key erases her, in another case
    answer = api.post("/v1/erasures", json={"address": "Ann@EXAMPLE.com"})
    # Then the answer counts what went
    assert answer.status_code == 200, answer.text
    counts = answer.json()
    assert counts["deliveries"] == 1 and counts["unsent"] == 1
    assert counts["attempts"] == 1 and counts["preferences"] == 1
    assert counts["inbox"] == 0 and counts["subscriptions"] == 0
    # and the delivery is erased, never to be sent
    got = api.get("/v1/deliveries/d1").json()
    assert (got["status"], got["address"], got["payload"]) == ("erased", "[erased]", None)
    assert got["attempts"][0]["error"] is None
    # Erasing again is harmless
    again = api.post("/v1/erasures", json={"address": ANN})
    assert again.status_code == 200 and set(again.json().values()) == {0}


def test_a_key_that_is_not_an_admin_key_is_refused(api: Api) -> None:
    _waiting_delivery(api)
    _, plain = api.app.state.api.keys.add("shop")
    answer = api.post("/v1/erasures", json={"address": ANN}, key=plain)
    assert answer.status_code == 403
    assert "admin key" in answer.json()["detail"]
    assert api.get("/v1/deliveries/d1").json()["status"] == "retrying"


def test_no_key_is_401(api: Api) -> None:
    assert api.post("/v1/erasures", json={"address": ANN}, key=None).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"address": ""},
        {"address": "   "},
        {"address": "ann\u0000@example.com"},
        {"address": "@@@ ..."},
        {"address": "a" * 600},
        {"address": 5},
        {},
        {"address": ANN, "also": 1},
    ],
)
def test_bad_input_is_422_naming_the_field(api: Api, body: dict[str, object]) -> None:
    _waiting_delivery(api)
    answer = api.post("/v1/erasures", json=body)
    assert answer.status_code == 422, answer.text
    assert any("address" in line or "also" in line for line in answer.json()["errors"]), (
        answer.json()
    )
    assert api.get("/v1/deliveries/d1").json()["status"] == "retrying"


def test_the_route_is_described_in_openapi(api: Api) -> None:
    doc = api.get("/openapi.json").json()
    post = doc["paths"]["/v1/erasures"]["post"]
    assert {"200", "401", "403", "422", "503"} <= set(post["responses"])
    assert "admin key" in post["description"]
    schema = doc["components"]["schemas"]["ErasureCounts"]
    assert {"deliveries", "unsent", "inbox", "subscriptions", "preferences"} <= set(
        schema["properties"]
    )
    statuses = next(
        p for p in doc["paths"]["/v1/deliveries"]["get"]["parameters"] if p["name"] == "status"
    )
    assert "erased" in str(statuses["schema"]) or "erased" in str(doc["components"])
