import pickle

import pytest

from delivery import errors

ALL = [
    obj
    for obj in vars(errors).values()
    if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_survives_pickling(cls: type[Exception]) -> None:
    # Celery serialises exceptions; extra context must come back too.
    exc = cls("went wrong")
    if isinstance(exc, errors.DeliveryError):
        exc.dispatcher, exc.status = "webhook", 503
    if isinstance(exc, errors.RetryableError):
        exc.retry_after = 7.5
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert back.args == ("went wrong",)
    assert back.__dict__ == exc.__dict__


def test_retryable_keeps_retry_after() -> None:
    exc = errors.RateLimited("slow down", dispatcher="slack", status=429, retry_after=30)
    assert (exc.retry_after, exc.status, exc.dispatcher) == (30, 429, "slack")
    assert isinstance(exc, errors.RetryableError)
