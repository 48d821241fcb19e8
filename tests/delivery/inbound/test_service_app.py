"""``delivery serve``'s own app serves ``/inbound/NAME`` and ``/receipts/CHANNEL``, without
an API key (providers call them), on the app's own engine."""

import requests
from twilio.request_validator import RequestValidator

from delivery.api import create_app
from delivery.inbound.wiring import Inbound
from schemas import Settings
from tests.support.uvicorn_server import serving

TOKEN = "service-app-twilio-token"


def test_the_service_serves_inbound_and_receipts_without_a_key(settings: Settings) -> None:
    app = create_app(settings)
    Inbound.from_assembly(app.state.api.assembly).backends.add(
        "tw", "twilio", {"auth_token": TOKEN}
    )
    form = {"MessageSid": "SM1", "From": "+14155552671", "Body": "hi"}
    with serving(app) as base:
        url = f"{base}/inbound/tw"
        signature = RequestValidator(TOKEN).compute_signature(url, form)
        accepted = requests.post(url, data=form, headers={"X-Twilio-Signature": signature})
        assert accepted.status_code == 200 and accepted.text.endswith("<Response/>")
        assert requests.post(url, data=form, timeout=5).status_code == 403
        assert requests.post(f"{base}/receipts/nosuch", data=form, timeout=5).status_code == 404
        paths = requests.get(f"{base}/openapi.json", timeout=5).json()["paths"]
    assert {"/inbound/{name}", "/receipts/{channel}"} <= set(paths)
    # on the app's own engine, not a second one
    assert app.state.inbound.assembly is app.state.api.assembly
    [entry] = app.state.inbound.inbox.find()
    assert (entry.backend, entry.text) == ("tw", "hi")
