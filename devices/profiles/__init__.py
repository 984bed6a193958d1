"""Device profiles: data shared by the drivers and the simulators, validated by pydantic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints

__all__ = ["Identifier", "NonEmpty", "StrictModel", "choice"]


def _identifier(v: str) -> str:
    if not v.isidentifier():
        raise ValueError(f"must be an identifier, got {v!r}")
    return v


Identifier = Annotated[str, AfterValidator(_identifier)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


def choice(enum: type[StrEnum]) -> BeforeValidator:
    """A validator taking exactly one of `enum`'s values, naming them all when it is not."""

    def check(v: Any) -> Any:
        if isinstance(v, str) and v in {e.value for e in enum}:
            return enum(v)
        raise ValueError(f"must be one of {', '.join(e.value for e in enum)}, got {v!r}")

    return BeforeValidator(check)


class StrictModel(BaseModel):
    """A profile's TOML table: no unknown keys, no silent coercion (a "5" is not 5), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
