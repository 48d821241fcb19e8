"""A custom validator for the ``http`` kind (the seed's OnlyTextMeHttpBackendForm)."""

from pydantic import BaseModel, field_validator

MY_NUMBER = "1231231234"


class OnlyTextMe(BaseModel):
    phone: str
    message: str
    campaign: str

    @field_validator("phone")
    @classmethod
    def _only_me(cls, value: str) -> str:
        if value != MY_NUMBER:
            raise ValueError(f"SMS received from number other than {MY_NUMBER}")
        return value

    @field_validator("message")
    @classmethod
    def _clean(cls, value: str) -> str:
        return value.strip()
