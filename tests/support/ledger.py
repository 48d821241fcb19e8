"""The ledger a fault test ends with: what was sent, what the log says became of each, and
what the receiver saw, every duplicate explained by an attempt in the log."""

from collections import Counter
from dataclasses import dataclass

from delivery.log import DeliveryLog
from tests.support.receiver import Receiver

FINAL = {"delivered", "failed"}


@dataclass(frozen=True)
class Ledger:
    sent: int
    delivered: int
    failed: int
    pending: int
    unknown: int  # never reached the log: lost, unless it is still on its way
    duplicates: int  # requests the receiver saw beyond the first, per delivery

    def __str__(self) -> str:
        return (
            f"sent {self.sent} = delivered {self.delivered} + failed {self.failed} + "
            f"pending {self.pending} (+ unknown {self.unknown}); duplicates {self.duplicates}"
        )


def ledger(log: DeliveryLog, receiver: Receiver, ids: list[str]) -> Ledger:
    """Check every delivery against the log and the receiver, and count them.

    Asserts: each request the receiver saw is an attempt the log recorded (a duplicate is
    a resend after a crash or an outage, never a second delivery made out of nothing);
    no delivery is recorded as delivered twice; nothing reached the receiver that was not
    sent.
    """
    seen = receiver.count_by_id()
    assert set(seen) <= set(ids), f"the receiver saw deliveries nobody sent: {set(seen) - set(ids)}"
    statuses: Counter[str] = Counter()
    duplicates = 0
    for delivery_id in ids:
        record = log.get(delivery_id)
        if record is None:
            statuses["unknown"] += 1
            assert delivery_id not in seen, f"{delivery_id} was sent but the log never knew it"
            continue
        statuses[record.status if record.status in FINAL else "pending"] += 1
        requests = seen.get(delivery_id, 0)
        assert requests <= len(record.attempts), (delivery_id, requests, record.attempts)
        delivered = [a for a in record.attempts if a.outcome == "delivered"]
        assert len(delivered) <= 1, f"{delivery_id} recorded as delivered twice: {delivered}"
        if record.status == "delivered":
            assert requests >= 1, f"{delivery_id} is delivered, but the receiver never saw it"
        duplicates += max(0, requests - 1)
    result = Ledger(
        sent=len(ids),
        delivered=statuses["delivered"],
        failed=statuses["failed"],
        pending=statuses["pending"],
        unknown=statuses["unknown"],
        duplicates=duplicates,
    )
    print(result)
    return result
