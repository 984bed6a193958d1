"""The variable-message-sign register protocol, on the shared Modbus session.

A sign holds a control block (active slot, shown message id and CRC, brightness, status
bits) and numbered slots (message id, arrow, expiry, text). Content is written to a slot
that is not shown, activated, and confirmed when the control block reports the new
message id and the CRC of its text. What the display driver adds (availability, health,
the Driver seam) stays in `devices/displays.py`; the Modbus connection, its errors and its
reconnects are `devices.protocols.modbus`.
"""

from __future__ import annotations

import math

from pymodbus.client import AsyncModbusTcpClient

from devices.profiles.displays import DisplayContent, VmsProfile, crc16, decode_text, encode_text
from devices.protocols.modbus import PRIO_COMMAND, PRIO_POLL, ModbusSession
from devices.protocols.registers import BlockDecoder, PointValueError, decode, encode
from edge.events import Value

__all__ = ["VmsLink"]


class VmsLink:
    """Reads and writes one sign through its `ModbusSession`; remembers the shown slot's text."""

    def __init__(self, session: ModbusSession, profile: VmsProfile) -> None:
        self.session = session
        self.profile = profile
        self.control_decoder = BlockDecoder(profile.control)
        self.shown_key: tuple[int, int, int] | None = None  # (slot, message id, crc) of `shown`
        self.shown: tuple[str, str] = ("", "none")  # text, arrow

    async def _control(self, client: AsyncModbusTcpClient) -> dict[str, Value]:
        v = self.profile
        regs = await self.session.read_regs(client, v.control.base, v.control.span)
        try:
            return self.control_decoder.decode(regs)
        except PointValueError as exc:
            raise self.session.reply_error(f"control block: {exc}") from exc

    async def poll(self, timeout_s: float) -> dict[str, Value]:
        """Read the control block (and the shown slot when it changed); the sign's telemetry."""
        v = self.profile

        async def go(client: AsyncModbusTcpClient) -> tuple[dict[str, Value], str, str]:
            values = await self._control(client)
            slot, shown_id, crc = (
                int(values["active_slot"]),
                int(values["shown_message_id"]),
                int(values["shown_crc"]),
            )
            if not shown_id or not slot:
                return values, "", "none"
            key = (slot, shown_id, crc)
            if key == self.shown_key:
                return values, *self.shown
            text, arrow = await self.read_slot(client, slot)
            if crc16(text) != crc:
                raise self.session.reply_error(f"slot {slot} text does not match shown_crc {crc}")
            self.shown_key, self.shown = key, (text, arrow)
            return values, text, arrow

        values, text, arrow = await self.session.call(PRIO_POLL, timeout_s, go)
        telemetry: dict[str, Value] = {
            "online": True,
            "brightness": values["brightness"],
            "pixel_faults": values["pixel_faults"],
            "shown": text,
            "message_id": values["shown_message_id"],
            "arrow": arrow,
            "active_slot": values["active_slot"],
        }
        for bit, _ in v.control.point("status").bits:
            telemetry[bit] = values[bit]
        return telemetry

    async def read_slot(self, client: AsyncModbusTcpClient, slot: int) -> tuple[str, str]:
        """Text and arrow held in `slot`."""
        v = self.profile
        regs = await self.session.read_regs(client, v.slot_base(slot), v.slot_span)
        arrow_point = v.slot.point("arrow")
        try:
            code = int(decode(arrow_point, regs, arrow_point.offset))
        except PointValueError as exc:
            raise self.session.reply_error(f"slot {slot}: {exc}") from exc
        arrows = v.text.arrows
        return decode_text(v, regs, v.text_offset), arrows[code] if code < len(arrows) else "none"

    def slot_registers(self, content: DisplayContent) -> list[int]:
        """Registers of a whole slot (points, padding, text) for `content`."""
        v = self.profile
        regs = [0] * v.slot_span
        values = {
            "message_id": content.message_id,
            "arrow": v.text.arrows.index(content.arrow),
            "expires_at": 0 if content.expires_at is None else math.ceil(content.expires_at),
        }
        for name, value in values.items():
            point = v.slot.point(name)
            regs[point.offset : point.offset + point.count] = encode(point, value)
        regs[v.text_offset :] = encode_text(v, content.lines)
        return regs

    def brightness_regs(self, value: float) -> list[int]:
        """The brightness register for `value` percent (range checked by the codec)."""
        return encode(self.profile.control.point("brightness"), value)

    async def write_content(self, content: DisplayContent, timeout_s: float) -> float:
        """Fill a slot that is not shown, activate it, confirm by shown id and CRC."""
        v = self.profile
        s = self.session
        slot_regs = self.slot_registers(content)
        brightness = self.brightness_regs(content.brightness) if content.brightness is not None else None
        want_crc = crc16(content.text)

        async def go(client: AsyncModbusTcpClient) -> float:
            active = int((await self._control(client))["active_slot"])
            slot = active % v.slot_count + 1  # never the shown slot (unless there is only one)
            base = v.slot_base(slot)
            await s.write_regs(client, base, slot_regs)
            if await s.read_regs(client, base, len(slot_regs)) != slot_regs:
                raise s.reply_error(f"slot {slot} read back differs from what was written")
            if brightness is not None:
                await s.write_regs(client, v.control_address("brightness"), brightness)
            await s.write_regs(client, v.control_address("active_slot"), [slot])
            back = await self._control(client)
            shown_id, crc = int(back["shown_message_id"]), int(back["shown_crc"])
            if shown_id != content.message_id or crc != want_crc:
                raise s.reply_error(
                    f"sign shows message {shown_id} (crc {crc:#06x}), expected {content.message_id} "
                    f"(crc {want_crc:#06x}); status {back['status']:#06x}"
                )
            self.shown_key, self.shown = (slot, shown_id, crc), (content.text, content.arrow)
            return float(shown_id)

        return float(await s.call(PRIO_COMMAND, timeout_s, go, await_link=True))

    async def write_brightness(self, value: float, timeout_s: float) -> float:
        """Write the brightness and return what the sign reads back."""
        point = self.profile.control.point("brightness")
        regs = self.brightness_regs(value)
        address = self.profile.control_address("brightness")
        s = self.session

        async def go(client: AsyncModbusTcpClient) -> float:
            await s.write_regs(client, address, regs)
            try:
                return float(decode(point, await s.read_regs(client, address, 1)))
            except PointValueError as exc:
                raise s.reply_error(f"read-back of brightness: {exc}") from exc

        return float(await s.call(PRIO_COMMAND, timeout_s, go, await_link=True))
