"""Templates: a subject, a text and an HTML part, rendered with an event's context."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.errors import ConfigurationError, RenderError, TemplateRefused
from delivery.notifications.sandbox import HTML, TEXT, render
from delivery.notifications.tables import SubscriptionRow, TemplateRow
from delivery.wording import plural
from schemas import CHANNEL_NAME_PATTERN, Payload
from schemas.validation import explain

#: Template names follow channel names: identifiers people type.
TEMPLATE_NAME_PATTERN = CHANNEL_NAME_PATTERN
_PARTS = ("subject", "text", "html")


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    updated_at: datetime | None = None

    def compile(self) -> None:
        """Compile every part now, so a broken template is refused when it is added.

        Raises:
            TemplateRefused: a part does not compile; the message names the part and line.
        """
        for part in _PARTS:
            source = getattr(self, part)
            if source is None:
                continue
            try:
                (HTML if part == "html" else TEXT).template(source)
            except TemplateRefused as exc:
                raise TemplateRefused(f"{part}: {exc}", lineno=exc.lineno) from None

    def render(self, variables: Mapping[str, Any], *, data: dict[str, Any]) -> Payload:
        """The payload for one delivery.

        Raises:
            RenderError: a part failed on these variables, or the payload is too large.
        """
        rendered: dict[str, str | None] = {}
        for part in _PARTS:
            source = getattr(self, part)
            if source is None:
                rendered[part] = None
                continue
            environment = HTML if part == "html" else TEXT
            try:
                rendered[part] = render(environment.template(source), variables)
            except (RenderError, TemplateRefused) as exc:
                raise RenderError(f"template {self.name!r}, {part}: {exc}") from None
        return payload_of(
            message=rendered["text"] or "",
            subject=rendered["subject"],
            html_message=rendered["html"],
            data=data,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def payload_of(**fields: Any) -> Payload:
    """A payload, or the reason it cannot be one (too large, say).

    Raises:
        RenderError: the rendered parts do not make a valid payload.
    """
    try:
        return Payload.model_validate(fields)
    except ValidationError as exc:
        raise RenderError("; ".join(explain(exc, limit=3))) from None


class TemplateStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(
        self,
        name: str,
        *,
        subject: str | None = None,
        text: str | None = None,
        html: str | None = None,
        replace: bool = False,
    ) -> Template:
        """Compile and store a template.

        Raises:
            ConfigurationError: a bad name, no part at all, or the name is taken.
            TemplateRefused: a part does not compile (naming the part and line).
        """
        if not re.match(TEMPLATE_NAME_PATTERN, name):
            raise ConfigurationError(
                f"template name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if text is None and html is None:
            raise ConfigurationError("a template needs --text, --html or both")
        template = Template(name, subject, text, html)
        template.compile()
        now = utcnow()
        with self._sessions.begin() as session:
            row = session.get(TemplateRow, name)
            if row is not None and not replace:
                raise ConfigurationError(
                    f"template {name!r} exists; remove it first or use --replace"
                )
            if row is None:
                row = TemplateRow(name=name, created_at=now)
                session.add(row)
            row.subject, row.text, row.html, row.updated_at = subject, text, html, now
        return Template(name, subject, text, html, now)

    def get(self, name: str) -> Template | None:
        with self._sessions() as session:
            row = session.get(TemplateRow, name)
        return _template(row) if row is not None else None

    def all(self) -> list[Template]:
        with self._sessions() as session:
            rows = session.scalars(select(TemplateRow).order_by(TemplateRow.name)).all()
        return [_template(row) for row in rows]

    def remove(self, name: str) -> bool:
        """Delete a template no subscription uses. False if there is none of that name.

        Raises:
            ConfigurationError: subscriptions still use it.
        """
        with self._sessions.begin() as session:
            users = session.scalars(
                select(SubscriptionRow.id).where(SubscriptionRow.template == name)
            ).all()
            if users:
                raise ConfigurationError(
                    f"template {name!r} is used by {plural(len(users), 'subscription')} "
                    f"({', '.join(users[:3])}); remove those first"
                )
            removed = session.execute(delete(TemplateRow).where(TemplateRow.name == name))
            return bool(removed.rowcount)  # type: ignore[attr-defined]


def _template(row: TemplateRow) -> Template:
    return Template(row.name, row.subject, row.text, row.html, row.updated_at)
