"""KIND ``http``: the seed's generic HTTP backend.

Request parameters are mapped to ``identity`` and ``text`` by name (RapidSMS's ``params``:
``--set identity=phone --set text=message``). Extra fields are validated as the seed's form
does: ``required`` names parameters that must be present, ``optional`` ones kept when
present, and ``model`` points at a pydantic model (``package.module:Model``) that validates
every parameter with its own rules (RapidSMS's custom validation).
"""

import hmac
import importlib
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from delivery.errors import BadSignature, InvalidInbound
from delivery.inbound.base import BackendConfig, InboundBackend, InboundMessage, InboundRequest
from delivery.inbound.base import scalar as _scalar
from schemas.validation import explain

#: The header carrying the shared secret, when the backend has a ``token``.
TOKEN_HEADER = "x-inbound-token"


def load_model(path: str) -> type[BaseModel]:
    """The pydantic model at ``package.module:Model``.

    Raises:
        ValueError: it does not import, or is not a pydantic model.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError("must look like package.module:Model")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{path} does not import: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ValueError(f"{path} is not a pydantic model")
    return obj


class HttpConfig(BackendConfig):
    identity: str = Field(default="identity", min_length=1, description="Parameter of the sender")
    text: str = Field(default="text", min_length=1, description="Parameter of the message text")
    provider_id: str | None = Field(
        default=None,
        min_length=1,
        description="Parameter of the provider's message id (a retry is not a second message)",
    )
    required: tuple[str, ...] = Field(
        default=(), description="Extra parameters that must be present (comma-separated)"
    )
    optional: tuple[str, ...] = Field(
        default=(), description="Extra parameters kept when present (comma-separated)"
    )
    model: str | None = Field(
        default=None,
        description="package.module:Model, a pydantic model validating every parameter",
    )
    token: SecretStr | None = Field(
        default=None, description="Shared secret senders give in the X-Inbound-Token header"
    )

    @field_validator("required", "optional", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # --set gives text: required=field1,field2
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None:
            load_model(value)
        return value


class HttpBackend(InboundBackend):
    slug = "http"
    verbose_name = "Generic HTTP (parameters mapped by name)"
    config_class = HttpConfig

    config: HttpConfig

    def __init__(self, config: HttpConfig) -> None:
        super().__init__(config)
        self._model = load_model(config.model) if config.model else None

    def parse(self, request: InboundRequest) -> InboundMessage:
        config = self.config
        if config.token is not None:
            given = request.headers.get(TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), config.token.get_secret_value().encode()):
                raise BadSignature(f"missing or wrong {TOKEN_HEADER} header")
        params = request.params()
        if self._model is not None:
            try:
                cleaned = self._model.model_validate(params).model_dump(mode="json")
            except ValidationError as exc:
                raise InvalidInbound("; ".join(explain(exc, limit=5))) from None
            # The model's cleaned values stand in for the raw ones (RapidSMS's clean_*).
            params = {**params, **cleaned}
            kept = {k: v for k, v in cleaned.items() if k not in (config.identity, config.text)}
        else:
            missing = [name for name in config.required if name not in params]
            if missing:
                raise InvalidInbound(f"missing required parameter(s): {', '.join(missing)}")
            kept = {
                name: params[name]
                for name in (*config.required, *config.optional)
                if name in params
            }
        provider_id = (
            _scalar(params, config.provider_id, what="provider id") if config.provider_id else None
        )
        return InboundMessage(
            identity=_scalar(params, config.identity, what="identity"),
            text=_scalar(params, config.text, what="text"),
            extra=kept,
            provider_id=provider_id,
        )
