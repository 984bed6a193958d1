"""The simulators' Modbus TCP server plumbing, once: listen, fall silent, come back.

The lamp controllers and the variable message signs are pymodbus servers built from
`SimDevice`s. A communication or power loss closes the listener (and drops open
connections, as a dead device does); the fault's end opens it again on the same port with
the same registers, so what the device held survives the outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice
from pymodbus.simulator.simcore import SimCore

__all__ = ["SimServer"]


@dataclass(slots=True)
class SimServer:
    """One simulated device's (or gateway's) Modbus TCP server on host:port."""

    host: str
    port: int
    server: ModbusTcpServer | None = None
    listening: bool = False

    async def listen(self, devices: Callable[[], list[SimDevice]], bind: Callable[[SimCore], None]) -> None:
        """Listen; the first time build the server from `devices()` and `bind` its live registers."""
        if self.server is None:
            self.server = ModbusTcpServer(devices(), address=(self.host, self.port))
            core = self.server.context
            if not isinstance(core, SimCore):  # pymodbus 3.16 builds a SimCore from SimDevices
                raise TypeError(f"unexpected pymodbus datastore {type(core).__name__}")
            bind(core)
        if not await self.server.listen():
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.listening = True

    def silence(self) -> None:
        """Stop listening and drop the open connections (the registers stay)."""
        if self.server is not None and self.listening:
            self.server.close()
            self.listening = False
