"""``ttl`` with a real worker: a delivery held past its deadline ends ``expired`` at the
deadline and never reaches the receiver; one in time is delivered."""

import pytest

import delivery
from schemas import Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


def test_a_held_delivery_expires_at_its_deadline_unsent(embedded_stack: Stack) -> None:
    secret = webhook_secret()
    embedded_stack.channels.add("held", "webhook", {"secret": secret, "timeout": 5})
    embedded_stack.channels.add("open", "webhook", {"secret": secret, "timeout": 5})
    embedded_stack.channels.set_paused("held", True)
    embedded_stack.worker()
    with Receiver(secret) as receiver:
        # A one-time code on a paused channel, with 2 seconds to live; another in time
        late = delivery.send("held", receiver.url("/late"), Payload(message="code"), ttl=2).id
        sent = delivery.send("open", receiver.url("/sent"), Payload(message="code"), ttl=60).id
        embedded_stack.wait_until([sent], {"delivered"})
        # The pause would hold it for a probe interval (30 s); its deadline ends it sooner
        embedded_stack.wait_until([late], {"expired"}, timeout=20)
        # Resuming the channel sends nothing late
        embedded_stack.channels.set_paused("held", False)
        receiver.wait_for(1)
    record = embedded_stack.log.get(late)
    assert record is not None and "ttl ran out" in (record.last_error or "")
    assert [r.path for r in receiver.received] == ["/sent"]
