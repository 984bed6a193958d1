"""The one seam between the daemon and every protocol driver.

The dispatcher writes through a `Driver`; drivers publish `Telemetry` and
`Availability` events themselves, so reading needs no method here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Driver(Protocol):
    """Writes points of the devices it handles and confirms them by read-back."""

    def handles(self, device_id: str) -> bool:
        """Whether this driver reaches `device_id`."""
        ...

    # timeout in the signature: a driver must drop a connection whose request timed out
    # in flight, which a caller's asyncio.timeout around the call cannot do
    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Write `value` to `point`, read it back and return the read-back value.

        Raises DeviceTimeout (no answer within `timeout` real seconds),
        DeviceUnavailable (connection down or in backoff) or DeviceReplyError
        (the device refused, or the value cannot be right: nothing is sent then).
        """
        ...


@runtime_checkable
class PayloadDriver(Driver, Protocol):
    """A driver whose points take structured values (display content), not only numbers."""

    async def write_payload(self, device_id: str, point: str, payload: str, timeout: float) -> float:  # noqa: ASYNC109
        """Write a JSON payload and return the read-back id (e.g. the message id a display echoes)."""
        ...
