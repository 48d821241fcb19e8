"""``/healthz`` (the process is up) and ``/readyz`` (broker and log reachable): no key."""

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from delivery.api.state import State

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "the broker or the log is unreachable"}},
)
def readyz(state: State) -> JSONResponse:
    """Ready to take work: the broker and the delivery log both answer (503 if not)."""
    checks: dict[str, str] = {}
    try:
        state.broker.check()
        checks["broker"] = "ok"
    except OSError as exc:
        logger.warning("readyz: broker unreachable (%s)", exc)
        checks["broker"] = "unreachable"
    try:
        state.check_log()
        checks["log"] = "ok"
    except SQLAlchemyError as exc:
        logger.warning("readyz: delivery log unavailable (%s)", type(exc).__name__)
        checks["log"] = "unreachable"
    except RuntimeError as exc:
        checks["log"] = str(exc)
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
