"""Displays: LED boards over a real MQTT broker, message signs on real pymodbus servers."""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest
from conftest_displays import DisplayIds
from conftest_modbus import Recorder
from conftest_mqtt import PrivateBroker

from devices.displays import DisplayDriver
from devices.profiles.displays import (
    LED_BOARD_PROFILE_PATH,
    VMS_PROFILE_PATH,
    BoardStatus,
    DisplayContent,
    crc16,
    decode_text,
    default_vms_profile,
    encode_text,
    load_display_profile,
    parse_content,
    render,
    status_payload,
)
from devices.protocols.registers import PointValueError
from edge.clock import ManualClock
from edge.driver import Driver
from edge.errors import ConfigError, DeviceReplyError, DeviceUnavailable
from edge.events import Value
from simulators.displays import DisplaySimulator, SimBoard

TEXT = "P1 Stadthaus\nfrei 123"


def content(message_id: int, *lines: str, **extra: object) -> dict[str, object]:
    """A content point value."""
    return {"message_id": message_id, "lines": list(lines), **extra}


async def wait_value(recorder: Recorder, display_id: str, key: str, value: Value) -> None:
    """Wait until the display's newest telemetry has `key` == `value`."""

    def ok() -> bool:
        t = recorder.latest(display_id)
        return t is not None and t.values.get(key) == value

    await recorder.wait(ok, f"{display_id} {key}={value!r}")


# -- profiles and content, no I/O ----------------------------------------------------


def test_shipped_profiles_load() -> None:
    """Both shipped profiles load, and the VMS text codec round-trips the rendered text."""
    assert load_display_profile(LED_BOARD_PROFILE_PATH).kind == "led_board"
    vms = load_display_profile(VMS_PROFILE_PATH)
    assert vms.kind == "vms"
    assert (
        decode_text(default_vms_profile(), encode_text(default_vms_profile(), ["P1 Stadthaus", "frei 123"]))
        == TEXT
    )
    assert render(["a  ", "", "b", " ", ""]) == "a\n\nb"
    assert crc16("123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


@pytest.mark.parametrize(
    ("path", "old", "new", "key"),
    [
        (VMS_PROFILE_PATH, "stride = 32", "stride = 20", "slots.stride"),
        (VMS_PROFILE_PATH, "chars_per_line = 16", "chars_per_line = 15", "text.chars_per_line"),
        (VMS_PROFILE_PATH, 'charset = "ascii"', 'charset = "unicode"', "text.charset"),
        (VMS_PROFILE_PATH, "max = 8   # slots", "max = 7   # slots", "control.points.active_slot"),
        (
            LED_BOARD_PROFILE_PATH,
            'status_topic = "displays/{id}/status"',
            'status_topic = "displays/+/s"',
            "mqtt.status_topic",
        ),
        (LED_BOARD_PROFILE_PATH, 'ts = "ts"', 'ts = "ts"\nspeed = "v"', "status.keys.speed"),
        (LED_BOARD_PROFILE_PATH, 'kind = "led_board"', 'kind = "tv"', "profile.kind"),
    ],
)
def test_profile_errors_name_key_and_file(tmp_path: Path, path: Path, old: str, new: str, key: str) -> None:
    """A bad profile fails at load with the key and the file in the error."""
    text = path.read_text()
    assert old in text
    bad = tmp_path / path.name
    bad.write_text(text.replace(old, new, 1))
    tomllib.loads(bad.read_text())  # still TOML: the loader, not the parser, must catch it
    with pytest.raises(ConfigError) as info:
        load_display_profile(bad)
    assert info.value.key == key
    assert info.value.file == str(bad)
    assert key in str(info.value)


def test_content_parsing() -> None:
    """Content arrives as a dict or JSON text; malformed content is a PointValueError."""
    c = parse_content('{"message_id": 7, "lines": ["a"], "expires_at": 10}')
    assert c == DisplayContent(message_id=7, lines=("a",), expires_at=10.0)
    for bad in (
        "{",
        "[]",
        '{"lines": []}',
        '{"message_id": 0}',
        '{"message_id": true}',
        '{"message_id": 1, "x": 1}',
    ):
        with pytest.raises(PointValueError):
            parse_content(bad)


# -- against the simulator -------------------------------------------------------------


async def test_display_driver_is_a_driver(display_driver: DisplayDriver, display_ids: DisplayIds) -> None:
    """The driver fits the dispatcher's seam and claims exactly its displays."""
    assert isinstance(display_driver, Driver)
    assert all(display_driver.handles(d) for d in (*display_ids.boards, *display_ids.signs))
    assert not display_driver.handles("lc-001")


async def test_content_shown_and_confirmed(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds, recorder: Recorder
) -> None:
    """Content written to a board and a sign is shown as text, confirmed by its echoed id, and reported."""
    for n, display_id in enumerate((display_ids.boards[0], display_ids.signs[0]), start=1):
        value = content(100 + n, "P1 Stadthaus", "frei 123", arrow="left")
        assert await display_driver.write(display_id, "content", json.dumps(value), 2.0) == 100 + n
        assert display_sim.shown(display_id) == TEXT
        assert display_sim.message_id(display_id) == 100 + n
        assert display_sim.arrow(display_id) == "left"
        await wait_value(recorder, display_id, "message_id", 100 + n)
        t = recorder.latest(display_id)
        assert t is not None
        assert t.values["shown"] == TEXT
        assert t.values["arrow"] == "left"
        assert t.values["online"] is True


async def test_sign_never_overwrites_the_shown_slot(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds, recorder: Recorder
) -> None:
    """Each new message goes to a slot that is not on show, then becomes active; the text follows."""
    sign = display_ids.signs[1]
    slots = []
    for i in range(1, 11):
        await display_driver.write(sign, "content", content(i, f"Nr {i}"), 2.0)
        assert display_sim.shown(sign) == f"Nr {i}"
        await wait_value(recorder, sign, "message_id", i)
        t = recorder.latest(sign)
        assert t is not None
        slots.append(t.values["active_slot"])
        assert t.values["shown"] == f"Nr {i}"
    assert all(a != b for a, b in itertools.pairwise(slots))
    assert set(slots) == set(range(1, 9))  # all eight slots in turn


async def test_brightness(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds, recorder: Recorder
) -> None:
    """Brightness is written, read back and reported, on both kinds, alone or with content."""
    board, sign = display_ids.boards[0], display_ids.signs[0]
    for display_id in (board, sign):
        assert await display_driver.write(display_id, "brightness", 35, 2.0) == 35.0
        assert display_sim.brightness(display_id) == 35
        await wait_value(recorder, display_id, "brightness", 35)
        await display_driver.write(display_id, "content", content(5, "Hell", brightness=90), 2.0)
        assert display_sim.brightness(display_id) == 90
        await wait_value(recorder, display_id, "brightness", 90)


async def test_a_write_after_a_dropped_connection_goes_through(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds
) -> None:
    """A request timed out in flight and dropped a sign's connection; the sign stays reported
    online (one late answer is not a lost sign). The next write reopens the link and is shown
    instead of failing with "not connected"."""
    sign = display_ids.signs[0]
    session = display_driver._signs[sign].session
    session.drop()  # what a timeout in flight does
    assert display_driver.online(sign)
    assert await display_driver.write(sign, "brightness", 45, 3.0) == 45.0
    assert display_sim.brightness(sign) == 45
    assert await display_driver.write(sign, "content", content(8, "Umleitung"), 3.0) == 8.0


async def test_pixel_faults_reported(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds, recorder: Recorder
) -> None:
    """Dead pixels are counted in telemetry (and flagged in a sign's status bits) until repaired."""
    board, sign = display_ids.boards[1], display_ids.signs[1]
    display_sim.inject(board, "pixel_fault", pixels=7)
    display_sim.inject(sign, "pixel_fault", pixels=3)
    await wait_value(recorder, board, "pixel_faults", 7)
    await wait_value(recorder, sign, "pixel_faults", 3)
    await wait_value(recorder, sign, "pixel_fault", True)
    display_sim.clear(sign, "pixel_fault")
    display_sim.clear(board)
    await wait_value(recorder, sign, "pixel_fault", False)
    await wait_value(recorder, board, "pixel_faults", 0)
    assert display_driver.online(board)
    assert display_driver.online(sign)


@pytest.mark.parametrize("kind", ["boards", "signs"])
async def test_comm_loss_down_once_back_once(
    kind: str,
    display_driver: DisplayDriver,
    display_sim: DisplaySimulator,
    display_ids: DisplayIds,
    recorder: Recorder,
    manual_clock: ManualClock,
) -> None:
    """Communication loss: availability goes down once and comes back once; the alarm waits for both limits."""
    display_id = getattr(display_ids, kind)[0]
    other = getattr(display_ids, kind)[1]
    await display_driver.write(display_id, "content", content(9, "Umleitung"), 2.0)
    display_sim.inject(display_id, "comm_loss")
    await recorder.wait(lambda: recorder.availability(display_id) == [True, False], "down", 5.0)
    with pytest.raises(DeviceUnavailable):
        await display_driver.write(display_id, "content", content(10, "x"), 1.0)
    await recorder.wait(lambda: display_driver.health(display_id).missed_polls >= 10, "10 missed polls", 5.0)
    health = display_driver.health(display_id)
    assert not health.alarm_due  # 10 polls missed, but not yet 2 minutes
    manual_clock.advance(121.0)
    assert display_driver.health(display_id).alarm_due
    assert not display_driver.health(other).alarm_due  # the other one kept answering
    assert display_sim.shown(display_id) == "Umleitung"  # it still shows what it had
    display_sim.clear(display_id, "comm_loss")
    await recorder.wait(lambda: recorder.availability(display_id) == [True, False, True], "back", 5.0)
    health = display_driver.health(display_id)
    assert health.missed_polls < 10
    assert not health.alarm_due
    assert recorder.availability(other) == [True]
    assert await display_driver.write(display_id, "content", content(11, "Frei"), 2.0) == 11
    assert display_sim.shown(display_id) == "Frei"


async def test_bad_content_refused_without_touching_the_device(
    display_driver: DisplayDriver,
    display_sim: DisplaySimulator,
    display_ids: DisplayIds,
    manual_clock: ManualClock,
) -> None:
    """Content a display cannot show is refused before anything is sent; the display keeps its message."""
    board, sign = display_ids.boards[0], display_ids.signs[0]
    for display_id in (board, sign):
        await display_driver.write(display_id, "content", content(1, "Alt"), 2.0)
    writes = display_driver.stats.writes
    now = manual_clock.now()
    bad_for_both: list[tuple[str, object]] = [
        ("content", content(2, "a", "b", "c", "d")),  # four lines, both show three
        ("content", content(2, "x" * 21)),  # longer than either line
        ("content", content(2, "Abgelaufen", expires_at=now - 1)),  # already expired
        ("content", content(2, "Pfeil", arrow="down")),
        ("content", content(2, "Hell", brightness=101)),
        ("content", "{not json"),
        ("content", 3.0),
        ("content", {"lines": ["ohne id"]}),
        ("content", content(2, "Tab\there")),
        ("brightness", 150),
        ("brightness", "50"),
        ("brightness", float("nan")),
        ("text", "hello"),
    ]
    for display_id in (board, sign):
        for point, value in bad_for_both:
            with pytest.raises(PointValueError):
                await display_driver.write(display_id, point, value, 2.0)  # type: ignore[arg-type]
    with pytest.raises(PointValueError):  # the sign holds ASCII only; the board shows it
        await display_driver.write(sign, "content", content(2, "Südwall"), 2.0)
    with pytest.raises(PointValueError):  # 17 characters: the board shows 20, the sign 16
        await display_driver.write(sign, "content", content(2, "Parkhaus Stadtmit"), 2.0)
    assert display_driver.stats.writes == writes
    assert display_driver.stats.refused == 2 * len(bad_for_both) + 2
    for display_id in (board, sign):
        assert display_sim.shown(display_id) == "Alt"
        assert display_sim.message_id(display_id) == 1
    assert await display_driver.write(board, "content", content(3, "Südwall"), 2.0) == 3
    assert display_sim.shown(board) == "Südwall"


async def test_expired_message_blanks_on_the_device(
    display_driver: DisplayDriver,
    display_sim: DisplaySimulator,
    display_ids: DisplayIds,
    recorder: Recorder,
    manual_clock: ManualClock,
) -> None:
    """A message blanks when it expires, on the display itself; telemetry shows the blank."""
    until = manual_clock.now() + 60
    for display_id in (display_ids.boards[0], display_ids.signs[0]):
        await display_driver.write(display_id, "content", content(4, "Sturmwarnung", expires_at=until), 2.0)
        assert display_sim.shown(display_id) == "Sturmwarnung"
    manual_clock.advance(61.0)
    for display_id in (display_ids.boards[0], display_ids.signs[0]):
        await recorder.wait(lambda d=display_id: display_sim.shown(d) == "", f"{display_id} blank")
        await wait_value(recorder, display_id, "message_id", 0)
        t = recorder.latest(display_id)
        assert t is not None
        assert t.values["shown"] == ""


async def test_power_loss(
    display_driver: DisplayDriver, display_sim: DisplaySimulator, display_ids: DisplayIds, recorder: Recorder
) -> None:
    """A sign on backup power reports power loss and a dark face; a board without power drops off."""
    board, sign = display_ids.boards[1], display_ids.signs[1]
    for display_id in (board, sign):
        await display_driver.write(display_id, "content", content(8, "P2 Westfalen"), 2.0)
        display_sim.inject(display_id, "power_loss")
        assert display_sim.shown(display_id) == ""
    await wait_value(recorder, sign, "power_loss", True)
    await wait_value(recorder, sign, "shown", "")
    with pytest.raises(DeviceReplyError, match="shows message 0"):
        await display_driver.write(sign, "content", content(9, "P2 Westfalen"), 2.0)
    await recorder.wait(lambda: recorder.availability(board) == [True, False], "board down", 5.0)
    assert recorder.availability(sign) == [True]  # the controller still answers
    for display_id in (board, sign):
        display_sim.clear(display_id, "power_loss")
    await recorder.wait(lambda: recorder.availability(board) == [True, False, True], "board back", 5.0)
    await wait_value(recorder, sign, "power_loss", False)
    assert display_sim.shown(board) == "P2 Westfalen"  # its retained content, not yet expired
    assert await display_driver.write(sign, "content", content(10, "P2 Westfalen"), 2.0) == 10


async def test_comm_loss_failsafe_blanks_until_new_content(
    display_driver: DisplayDriver,
    display_sim: DisplaySimulator,
    display_ids: DisplayIds,
    recorder: Recorder,
    manual_clock: ManualClock,
) -> None:
    """A display cut off for its fail-safe time blanks on its own and stays blank until new content."""
    board, sign = display_ids.boards[0], display_ids.signs[0]
    for display_id in (board, sign):
        await display_driver.write(display_id, "content", content(21, "frei 57"), 2.0)
        display_sim.inject(display_id, "comm_loss")
    for display_id in (board, sign):
        await recorder.wait(lambda d=display_id: recorder.availability(d) == [True, False], "down", 15.0)
    manual_clock.advance(200.0)
    for display_id in (board, sign):
        assert display_sim.shown(display_id) == "frei 57"  # not yet: fail-safe after 300 s
    manual_clock.advance(101.0)
    for display_id in (board, sign):
        await recorder.wait(lambda d=display_id: display_sim.shown(d) == "", f"{display_id} blank")
        display_sim.clear(display_id, "comm_loss")
    for display_id in (board, sign):
        await recorder.wait(lambda d=display_id: recorder.availability(d) == [True, False, True], "back", 5.0)
        await wait_value(recorder, display_id, "shown", "")  # the old number does not come back
    assert display_sim.shown(board) == ""  # its retained content is not new content
    for display_id in (board, sign):
        assert await display_driver.write(display_id, "content", content(22, "frei 12"), 2.0) == 22
        assert display_sim.shown(display_id) == "frei 12"


async def test_broker_outage_boards_down_once_back_once(
    private_broker: PrivateBroker, manual_clock: ManualClock, recorder: Recorder, display_ids: DisplayIds
) -> None:
    """When the broker goes away every board goes down once, and comes back once with it; signs are untouched."""
    boards = display_ids.boards
    sim = DisplaySimulator(
        manual_clock, boards=[SimBoard(b) for b in boards], mqtt_url=private_broker.url, status_interval_s=0.1
    )
    async with sim:
        driver = DisplayDriver(
            recorder,
            manual_clock,
            boards=boards,
            mqtt_url=private_broker.url,
            status_interval_s=0.1,
            timeout_s=1.0,
            backoff_base_s=0.02,
            backoff_max_s=0.1,
        )
        async with driver:
            await recorder.wait(lambda: all(driver.online(b) for b in boards), "boards online", 5.0)
            await private_broker.stop()
            await recorder.wait(
                lambda: all(recorder.availability(b) == [True, False] for b in boards), "down", 5.0
            )
            with pytest.raises(DeviceUnavailable):
                await driver.write(boards[0], "content", content(1, "x"), 1.0)
            await private_broker.start()
            await recorder.wait(
                lambda: all(recorder.availability(b) == [True, False, True] for b in boards), "back", 15.0
            )
            assert await driver.write(boards[0], "content", content(2, "wieder da"), 2.0) == 2
            assert sim.shown(boards[0]) == "wieder da"


async def test_a_recent_retained_status_is_a_sign_of_life_an_old_one_is_not(
    mqtt_url: str, manual_clock: ManualClock, recorder: Recorder, display_ids: DisplayIds
) -> None:
    """A daemon started beside running boards finds each board's retained status: one sent
    within the last status period shows the board online at once; one older than that (a board
    that died without its will reaching the broker) does not."""
    fresh, stale = display_ids.boards
    driver = DisplayDriver(
        recorder, manual_clock, boards=(fresh, stale), signs=(), mqtt_url=mqtt_url,
        status_interval_s=10.0, timeout_s=1.0, backoff_base_s=0.02, backoff_max_s=0.1,
    )  # fmt: skip
    p = driver.board_profile
    a = urlsplit(mqtt_url)
    now = manual_clock.now()
    async with aiomqtt.Client(a.hostname or "127.0.0.1", a.port or 1883) as client:
        for board, ts in ((stale, now - 60.0), (fresh, now - 2.0)):  # the stale one first
            status = BoardStatus(online=True, brightness=80, pixel_faults=0, text="P1", ts=ts)
            await client.publish(
                p.topic(p.status_topic, board), status_payload(p, status), qos=1, retain=True
            )
        try:
            async with driver:
                await recorder.wait(lambda: driver.online(fresh) is True, "the fresh board online", 5.0)
                assert driver.online(stale) is not True  # its status came first and was not taken
        finally:
            for board in (fresh, stale):
                await client.publish(p.topic(p.status_topic, board), b"", qos=1, retain=True)
