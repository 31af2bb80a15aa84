"""Request bodies, validated with pydantic. One model per endpoint body."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .catalogue import MAX_TIME_ON_PAGE_SECONDS, TRACK_TYPES

TenantId = Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]
MAX_METADATA_DEPTH = 8


def _storable_json(value: Any, depth: int = 0) -> Any:
    """Reject what PostgreSQL's JSONB cannot store (NUL, NaN/Infinity) and deep nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings may not contain NUL characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_json(key, depth + 1)
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("may not contain NUL characters")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_storable_json)]
Text = Annotated[str, AfterValidator(_no_nul)]


class Body(BaseModel):
    """Base for request bodies: unknown fields are ignored, as clients evolve."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class TrackEvent(Body):
    """``POST /api/analytics/track``: one event from a landing page or store."""

    tenant_id: TenantId
    event_type: Literal[TRACK_TYPES]  # type: ignore[valid-type]
    metadata: Metadata | None = Field(default=None, validate_default=True)

    @field_validator("metadata")
    @classmethod
    def _time_on_page_needs_seconds(
        cls, metadata: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        if info.data.get("event_type") != "time_on_page":
            return metadata
        seconds = (metadata or {}).get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("time_on_page needs metadata.seconds, a number >= 0")
        return {**(metadata or {}), "seconds": min(seconds, MAX_TIME_ON_PAGE_SECONDS)}


class Login(Body):
    """``POST /api/auth/login``."""

    email: Annotated[Text, Field(min_length=3, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
