"""One error tree for the daemon; library errors are translated at the boundary.

EdgeError
├── ConfigError            settings or inventory invalid (key, file, reason)
├── DeviceError            a field device could not be used
│   ├── DeviceTimeout      no answer within the timeout
│   ├── DeviceUnavailable  connection down or in backoff
│   └── DeviceReplyError   the device answered, but with an error or a bad value
├── CommandRefused         the dispatcher refused a command (reason)
├── PayloadError           an MQTT payload was malformed, unknown or oversized
├── PlanError              the optimizer produced no usable plan
└── UpstreamError          a northbound HTTP service (an NGSI-LD broker) did not answer
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(EdgeError):
    """A setting or inventory row is invalid; names the key and the file."""

    def __init__(self, message: str, *, key: str = "", file: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.file = file
        self.lines: list[str] = []

    def __str__(self) -> str:
        if self.lines:  # from `edge.tomlfile.config_error`: each line names its own file and key
            return "\n".join(self.lines)
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.args[0]}"


class DeviceError(EdgeError):
    """A field device could not be used."""

    def __init__(self, message: str, *, endpoint: str = "", unit: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.unit = unit


class DeviceTimeout(DeviceError):  # noqa: N818 - reads better than DeviceTimeoutError
    """The device did not answer within the timeout."""


class DeviceUnavailable(DeviceError):  # noqa: N818 - a state, not an error name
    """The connection is down or the device is in backoff."""


class DeviceReplyError(DeviceError):
    """The device answered with an exception code or a value out of range."""


class CommandRefused(EdgeError):  # noqa: N818 - a verdict, not an error name
    """The dispatcher refused a command; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PayloadError(EdgeError):
    """An MQTT payload was malformed, unknown or oversized."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PlanError(EdgeError):
    """The optimizer produced no usable plan."""


class UpstreamError(EdgeError):
    """A northbound HTTP service could not be reached or did not answer in time (`url` without
    credentials); an answer with an error status is a response, not this."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(f"{message} ({url})" if url else message)
        self.url = url
