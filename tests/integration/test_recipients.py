"""The recipient's say end to end: preferences and quiet hours set over HTTP on a real
``delivery serve``, deliveries posted there, a real worker process applying them (and a
channel's per-recipient throttle) before anything reaches the local receiver."""

import time
from datetime import timedelta
from urllib.parse import quote

import pytest
import requests

import delivery
from delivery.clock import utcnow
from delivery.recipients.preferences import EMPTY_RECHECK_SECONDS
from schemas import Payload
from tests.conftest import webhook_secret
from tests.delivery.dispatchers.conftest import start_smtp
from tests.integration.conftest import Stack
from tests.integration.test_api import _key, api_process
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


def test_preferences_quiet_hours_and_throttles_hold_in_a_real_worker(
    embedded_stack: Stack,
) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add(
        "hooks", "webhook", {"secret": secret, "timeout": 5}, per_recipient="2/h"
    )
    headers = _key(embedded_stack)
    embedded_stack.worker()
    now = utcnow()
    quiet = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=2):%H:%M}"
    with (
        Receiver(secret) as receiver,
        api_process(embedded_stack.env, embedded_stack.tmp_path / "api.log") as api,
    ):
        off, sleepy, busy = receiver.url("/off"), receiver.url("/sleepy"), receiver.url("/busy")
        # Given one recipient who turned marketing off, one in their quiet hours
        for address, doc in [
            (off, {"rules": [{"category": "marketing", "enabled": False}]}),
            (sleepy, {"timezone": "UTC", "quiet": quiet}),
        ]:
            put = requests.put(
                f"{api.url}/v1/preferences/{quote(address, safe='')}",
                json=doc,
                headers=headers,
                timeout=10,
            )
            assert put.status_code == 200, put.text
        got = requests.get(
            f"{api.url}/v1/preferences/{quote(off, safe='')}", headers=headers, timeout=10
        )
        assert got.json()["rules"] == [{"channel": None, "category": "marketing", "enabled": False}]
        # A worker that saw nobody with preferences (its warm-up looks) looks again within
        # this bound, counted from before that look (documented: a first preference is
        # honoured within two seconds of being set)
        time.sleep(EMPTY_RECHECK_SECONDS)

        def post(address: str, category: str) -> str:
            doc = {"channel": "hooks", "address": address, "category": category}
            response = requests.post(
                f"{api.url}/v1/deliveries",
                json={**doc, "payload": {"message": category}},
                headers=headers,
                timeout=10,
            )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        # When deliveries in several categories are posted to them and to a third address
        skipped = post(off, "marketing")
        scheduled = post(sleepy, "marketing")
        critical = [post(off, "security"), post(sleepy, "security")]
        capped = [post(busy, "news") for _ in range(3)]
        # Then the preferences skip, the quiet hours schedule, critical ones go at once
        embedded_stack.wait_until([skipped], {"skipped"})
        embedded_stack.wait_until([scheduled], {"scheduled"})
        embedded_stack.wait_until(critical, {"delivered"})
        # and the channel's throttle lets two of three through to one address
        counts = embedded_stack.wait_until(capped, {"delivered", "skipped"})
        assert counts == {"delivered": 2, "skipped": 1}
        doc = requests.get(
            f"{api.url}/v1/deliveries/{scheduled}", headers=headers, timeout=10
        ).json()
        assert doc["status"] == "scheduled" and doc["next_attempt_at"] is not None
        assert doc.get("category") == "marketing"
        reason = requests.get(
            f"{api.url}/v1/deliveries/{skipped}", headers=headers, timeout=10
        ).json()
        assert "preferences" in (reason["last_error"] or "")
        receiver.wait_for(4)
    assert sorted(r.path for r in receiver.received) == ["/busy", "/busy", "/off", "/sleepy"]


def test_one_click_unsubscribe_from_a_real_email_stops_the_next_one(
    embedded_stack: Stack,
) -> None:
    smtp = start_smtp()
    embedded_stack.channels.add(
        "mail",
        "email",
        {"host": "127.0.0.1", "port": smtp.port, "tls": "none", "from_address": "news@example.com"},
    )
    try:
        with api_process(embedded_stack.env, embedded_stack.tmp_path / "api.log") as api:
            # The worker makes links to this `delivery serve`, as DELIVERY_PUBLIC_URL says
            embedded_stack.worker(DELIVERY_PUBLIC_URL=api.url)

            def send(category: str) -> str:
                payload = Payload(message="hello", subject=category)
                return delivery.send("mail", "ann@example.com", payload, category=category).id

            # Given a marketing email that reached the mailbox with RFC 8058's headers
            first = send("marketing")
            embedded_stack.wait_until([first], {"delivered"})
            [mail] = smtp.mailbox.received
            assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            link = str(mail.message["List-Unsubscribe"]).strip("<>")
            assert link.startswith(f"{api.url}/unsubscribe/")
            # When a mail scanner follows the link nothing changes; the mailbox's POST does
            assert requests.get(link, timeout=10).status_code == 200
            still = send("marketing")
            embedded_stack.wait_until([still], {"delivered"})
            posted = requests.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=10)
            assert posted.status_code == 200
            # A worker that saw nobody with preferences looks again within this bound
            # (documented: honoured within two seconds); the first preference of the site
            time.sleep(EMPTY_RECHECK_SECONDS)
            # Then the next marketing email is skipped; a security one still goes, unlinked
            after = send("marketing")
            reset = send("security")
            embedded_stack.wait_until([after], {"skipped"})
            embedded_stack.wait_until([reset], {"delivered"})
            # An altered link is refused and changes nothing
            forged = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
            assert requests.post(forged, timeout=10).status_code in (400, 404)
    finally:
        smtp.stop()
    subjects = [m.message["Subject"] for m in smtp.mailbox.received]
    assert subjects == ["marketing", "marketing", "security"]
    assert smtp.mailbox.received[-1].message["List-Unsubscribe"] is None
