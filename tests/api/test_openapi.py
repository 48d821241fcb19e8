"""The OpenAPI document is the truth (issue 27): schemathesis generates requests from it,
valid and invalid, sends them to the real app in-process, and checks every answer against
it: no server error, every status code and header documented, every body as described,
what the document allows accepted and what it forbids refused.

Bounded so it runs with the rest of the suite: at most ``EXAMPLES`` requests per operation
and mode.
"""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from delivery.api import create_app
from schemas import Settings
from tests.api.conftest import Api

#: Requests per operation and generation mode (valid, invalid).
EXAMPLES = 100
#: What schemathesis takes as "accepted" by default, and 422.
ACCEPTED_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


@pytest.fixture
def api_schema(settings: Settings) -> Iterator[Any]:
    app = create_app(settings.model_copy(update={"api_rate_limit": 0}), key_cache_seconds=60)
    app.state.api.assembly.channels.add("hooks", "webhook", {"secret": "whsec_" + "A" * 44})
    _, key = app.state.api.keys.add("schemathesis", admin=True)
    config = SchemathesisConfig.from_dict(
        {
            # As the document's security scheme, so schemathesis also tries without.
            "auth": {"openapi": {"apiKey": {"bearer": key}}},
            "generation": {"mode": "all"},
            "operations": [
                {
                    # A channel must exist, and the message be one its dispatcher can
                    # carry: the document says so (422), but no schema can list the
                    # channels a deployment has, so a valid-looking message may be refused.
                    "include-path-regex": "^/v1/deliveries(/batch)?$",
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_422}},
                },
                {
                    # Likewise the time zones this machine knows, quiet hours that start
                    # and end at the same minute, an address that is only spaces.
                    "include-path-regex": "^/v1/preferences/",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_422}},
                },
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    yield schema
    app.state.api.close()


#: The operations are checked in this many tests, so that pytest-xdist spreads them (all
#: in one test was the suite's second-longest wait).
SHARDS = 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shard", range(SHARDS))
def test_the_server_answers_as_its_document_says(api_schema: Any, shard: int) -> None:
    # Each operation in each mode under hypothesis directly, not schemathesis's pytest
    # plugin (its lazy fixture reads a private attribute pytest 9.2 no longer has).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= SHARDS
    for operation in operations[shard::SHARDS]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def answers_as_documented(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate()

            try:
                answers_as_documented()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): as schemathesis skips it.
                if mode is not GenerationMode.NEGATIVE:
                    raise


def test_options_and_a_wrong_method_say_what_the_path_takes(api: Api) -> None:
    for path, allowed in [
        ("/v1/deliveries", "GET, POST"),
        ("/v1/deliveries/batch", "POST"),  # not the GET of a delivery called "batch"
        ("/inbound/sms", "GET, POST"),
        ("/v1/preferences/a@example.com", "GET, PUT"),
    ]:
        r = api.request("OPTIONS", path)
        assert r.status_code == 405 and r.headers["Allow"] == allowed, (path, r.headers)


def test_every_status_of_the_body_routes_is_in_the_document(api: Api) -> None:
    doc = api.get("/openapi.json", key=None).json()
    for path in ("/v1/deliveries", "/v1/deliveries/batch", "/v1/events"):
        documented = set(doc["paths"][path]["post"]["responses"])
        assert {"202", "400", "401", "413", "422", "429", "503"} <= documented, path
    for path in ("/inbound/{name}", "/receipts/{channel}"):
        assert {"400", "403", "404"} <= set(doc["paths"][path]["post"]["responses"]), path
    # and the rules the server enforces
    listing = {p["name"]: p for p in doc["paths"]["/v1/deliveries"]["get"]["parameters"]}
    assert "pattern" in listing["cursor"]["schema"]["anyOf"][0]
    # a body that is not UTF-8 JSON is 400, as documented
    r = api.post("/v1/deliveries", data=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
