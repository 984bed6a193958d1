"""Device profiles: data shared by the drivers and the simulators, validated by pydantic."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A profile's TOML table: no unknown keys, no silent coercion (a "5" is not 5), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
