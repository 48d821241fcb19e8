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


def test_errors_that_lived_elsewhere_are_in_the_tree() -> None:
    # They are pickled above like every other class of errors.py ...
    assert {"RenderError", "TemplateRefused"} <= {cls.__name__ for cls in ALL}
    assert all(issubclass(cls, errors.DeliveryError) for cls in ALL)
    # ... and their old import paths still give the same classes.
    from delivery.notifications import RenderError, TemplateRefused
    from delivery.notifications.sandbox import RenderError as SandboxRenderError
    from delivery.notifications.sandbox import TemplateRefused as SandboxTemplateRefused

    assert RenderError is SandboxRenderError is errors.RenderError
    assert TemplateRefused is SandboxTemplateRefused is errors.TemplateRefused


@pytest.mark.parametrize(
    ("exc", "attribute", "value"),
    [
        (errors.TemplateRefused("line 3: bad", lineno=3), "lineno", 3),
        (errors.RetryableError("slow", retry_after=30, status=429), "retry_after", 30),
    ],
    ids=["TemplateRefused", "RetryableError"],
)
def test_keyword_context_survives_pickling(exc: Exception, attribute: str, value: object) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert back.args == exc.args
    assert getattr(back, attribute) == value
