"""One attempt recorded in the log, as a worker records a batch of one: for tests that need
a delivery to have ended (failed, delivered) without running a worker."""

from delivery.log import AttemptResult, Claim, DeliveryLog, Finished


def finish(
    log: DeliveryLog,
    claim: Claim,
    result: AttemptResult,
    *,
    dispatcher: str | None,
    worker: str | None,
    parked: bool = False,
) -> bool:
    """Record the attempt and move the delivery on; False if the lease was lost meanwhile."""
    ended = Finished(claim, result, dispatcher=dispatcher, parked=parked)
    return log.finish_many([ended], worker=worker) == 1
