"""Validation errors explained to a person: one line per problem, naming the field.

Only locations and messages, never the input values: those may be large or secret.
"""

from pydantic import BaseModel, ValidationError


def explain(
    exc: ValidationError, *, model: type[BaseModel] | None = None, limit: int | None = None
) -> list[str]:
    """One line per problem. With ``model``, an unknown field names the allowed ones."""
    allowed = ", ".join(model.model_fields) or "none" if model is not None else ""
    lines = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "input"
        if error["type"] == "extra_forbidden" and model is not None:
            lines.append(f"unknown field {where!r}; allowed fields: {allowed}")
        elif error["type"] == "missing":
            lines.append(f"{where}: required")
        else:
            lines.append(f"{where}: {error['msg']}")
    return lines
