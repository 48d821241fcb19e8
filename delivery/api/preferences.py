"""``/v1/preferences/{address}``: what one recipient agreed to receive, and when.

``PUT`` replaces the whole document (a field left out is cleared), so a client that shows a
settings page sends back what the page shows; ``GET`` answers the same document, empty for
an address nobody has set anything for (everything on).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, Field, model_validator

from delivery.api.auth import api_key
from delivery.api.errors import invalid
from delivery.api.models import BODY_ERRORS, ERRORS
from delivery.api.state import State
from delivery.recipients.preferences import (
    MAX_KEY,
    MAX_RULES,
    Preferences,
    RecipientPreferences,
    Rule,
    check_key,
)
from delivery.recipients.quiet import MAX_TIMEZONE, QUIET_PATTERN, QuietHours, check_timezone
from schemas import Model
from schemas.messages import Category, ChannelName

router = APIRouter(prefix="/v1", tags=["preferences"], dependencies=[Depends(api_key)])

Timezone = Annotated[
    str, Field(min_length=1, max_length=MAX_TIMEZONE), AfterValidator(check_timezone)
]
Quiet = Annotated[
    str,
    Field(max_length=32, pattern=QUIET_PATTERN),
    AfterValidator(lambda v: str(QuietHours.parse(v))),
]
AddressPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_KEY,
        # No control characters: preferences are never kept for such an address, and a
        # line break would not even reach this route.
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="An email address, phone number, webhook URL…; email addresses are "
        "compared without case.",
    ),
]


class RuleDocument(Model):
    """On or off for a channel (null: every channel) and a category (null: every category).
    The most specific rule that matches a delivery decides."""

    channel: ChannelName | None = None
    category: Category | None = None
    enabled: bool


class PreferencesDocument(Model):
    """``PUT /v1/preferences/{address}``: the whole of one address's preferences."""

    timezone: Timezone | None = Field(
        default=None, description="An IANA time zone (`Europe/London`); quiet hours are in it."
    )
    quiet: Quiet | None = Field(
        default=None, description="Quiet hours, `HH:MM-HH:MM` local time, e.g. `22:00-07:00`."
    )
    rules: list[RuleDocument] = Field(default_factory=list, max_length=MAX_RULES)

    @model_validator(mode="after")
    def _one_rule_each(self) -> "PreferencesDocument":
        if len({(r.channel, r.category) for r in self.rules}) != len(self.rules):
            raise ValueError("two rules name the same channel and category")
        return self

    def to_preferences(self) -> RecipientPreferences:
        return RecipientPreferences(
            rules=tuple(Rule(r.channel, r.category, r.enabled) for r in self.rules),
            timezone=self.timezone,
            quiet=None if self.quiet is None else QuietHours.parse(self.quiet),
        )


class PreferencesView(PreferencesDocument):
    """One address's preferences, under the spelling they are kept by."""

    address: str


@router.get("/preferences/{address:path}", response_model=PreferencesView, responses=ERRORS)
def get_preferences(address: AddressPath, state: State) -> PreferencesView | JSONResponse:
    """The preferences of ``address``; empty (everything on) when none are set."""
    try:
        key = check_key(address)
    except ValueError as exc:
        return invalid([f"address: {exc}"])
    return _view(key, Preferences(state.log.engine).show(key))


@router.put("/preferences/{address:path}", response_model=PreferencesView, responses=BODY_ERRORS)
def put_preferences(
    address: AddressPath, document: PreferencesDocument, state: State
) -> PreferencesView | JSONResponse:
    """Replace the preferences of ``address``. Deliveries claimed from now on follow
    them (a worker that saw nobody with preferences looks again within two seconds)."""
    try:
        key = check_key(address)
    except ValueError as exc:
        return invalid([f"address: {exc}"])
    stored = Preferences(state.log.engine).replace(key, document.to_preferences())
    return _view(key, stored)


def _view(key: str, preferences: RecipientPreferences) -> PreferencesView:
    return PreferencesView.model_validate({"address": key, **preferences.to_json()})
