"""The HTTP service (``delivery serve``, ``uvicorn delivery.api:app``).

``create_app(settings)`` builds the FastAPI app; ``app`` is the one for the environment's
settings, made on first access, so importing this package connects to nothing. Inside:
``factory`` (``create_app`` and its router list), one router per concept (``deliveries``,
``health``, ``metrics``), ``auth`` and ``keys`` (API keys), ``limits`` (body size),
``errors`` (every failure as a status), ``models``, ``broker`` (probe and queue depth),
``state``.
"""

from typing import TYPE_CHECKING, Any

from delivery.api.factory import ROUTERS, create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    app: FastAPI

__all__ = ["ROUTERS", "app", "create_app"]

_app: "FastAPI | None" = None


def __getattr__(name: str) -> Any:
    # uvicorn's `delivery.api:app` looks the attribute up: the app is made then.
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
