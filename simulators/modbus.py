"""The simulators' Modbus TCP server plumbing, once: listen, fall silent, come back.

The lamp controllers and the variable message signs are pymodbus servers built from
`SimDevice`s. A communication or power loss closes the listener (and drops open
connections, as a dead device does); the fault's end opens it again on the same port with
the same registers, so what the device held survives the outage.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice
from pymodbus.simulator.simcore import SimCore

__all__ = ["Action", "SimServer", "write_action"]

#: pymodbus's per-request hook: (func_code, start_address, address, count, registers, set_values).
Action = Callable[
    [int, int, int, int, list[int], list[int] | list[bool] | None], Coroutine[None, None, ExcCodes | None]
]


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


def write_action(
    *,
    before: Callable[[], ExcCodes | None],
    check: Callable[[int, list[int], int, int], ExcCodes | None],
    after: Callable[[int, int], None],
) -> Action:
    """The hook pymodbus calls before each request of one unit, as a device answers it.

    `before()` runs on every request (note it, or refuse it with an exception code). For a
    write, `check(address, scratch, start, n)` sees the registers as they would be after it
    (`scratch[i]` holds address `start + i`) and may refuse it; only then are the registers
    written and `after(address, n)` acts on them at once.
    """

    async def action(
        _func_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        refused = before()
        if refused is not None or set_values is None:
            return refused
        values = [int(v) for v in set_values]
        at = address - start_address
        scratch = list(registers)
        scratch[at : at + len(values)] = values
        refused = check(address, scratch, start_address, len(values))
        if refused is not None:
            return refused
        registers[at : at + len(values)] = values
        after(address, len(values))
        return None

    return action
