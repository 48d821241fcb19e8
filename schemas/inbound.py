"""Task messages of the inbound side."""

from typing import Literal

from pydantic import Field

from schemas.messages import Model


class RouteRequest(Model):
    """What ``delivery.route_inbound`` carries: the id of a message already in the log
    (its text and sender stay there, out of the broker)."""

    schema_version: Literal[1] = 1
    id: str = Field(min_length=1, max_length=64)
