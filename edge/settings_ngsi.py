"""The `[ngsi]` table: the optional NGSI-LD exporter of the site's devices (`edge.app.ngsi`).

Kept beside the other tables (`edge.settings_sections`) in a file of its own, as the environment's
are: the exporter is optional, and its keys read as one list. docs/ngsi-ld.md explains them.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from edge.settings_sections import Section


class NgsiSettings(Section):
    """The NGSI-LD exporter (`edge.app.ngsi`), off by default: the site's devices as FIWARE Smart
    Data Models entities, upserted in batches to a context broker (Orion-LD, Scorpio, Stellio) or
    published on an MQTT topic (`mode = "mqtt"`). See docs/ngsi-ld.md."""

    enabled: bool = False
    mode: Literal["http", "mqtt"] = "http"
    url: str = "http://127.0.0.1:1026"  # the broker's base URL; /ngsi-ld/v1/... is appended
    tenant: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""  # NGSILD-Tenant ("": default)
    token: SecretStr | None = None  # sent as "Authorization: Bearer <token>"
    context: str = ""  # the @context of every entity ("": each model's Smart Data Models context)
    topic: Annotated[str, Field(pattern=r"^[^+#\x00]*$", max_length=200)] = ""  # mqtt mode; see docs
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    flush_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    min_interval_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0  # per entity, between two sends
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    queue_max_rows: Annotated[int, Field(ge=100)] = 200_000  # the retry queue's bound (entities)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in {"http", "https"} or not parts.hostname or port == -1:
            raise ValueError("must be an http:// or https:// URL with a host (and a valid port)")
        if parts.query or parts.fragment:
            raise ValueError("give the broker's base URL, without a query or fragment")
        return v.rstrip("/")
