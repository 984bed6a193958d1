"""CAP 1.2 messages (`edge.app.cap`): every message validates against the official OASIS schema.

The schema is vendored in tests/fixtures/cap/ (see its README); the tests check what a
consumer of the messages relies on beyond schema validity: one identifier per message,
references that name the replaced message, times and circle units, the severity mapping.
"""

from __future__ import annotations

import hashlib
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
import xmlschema
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.app.cap import (
    CAP_NS,
    HEADLINE_MAX,
    CapWarning,
    cap_circle,
    cap_datetime,
    cap_identifier,
    cap_message_identifier,
    cap_reference,
    cap_xml,
)

XSD = Path(__file__).resolve().parents[1] / "fixtures" / "cap" / "CAP-v1.2.xsd"
XSD_SHA256 = "b7798ef25868b068c97b268bda02d067c7d4ba9373adc5638bf37105804ee723"
NS = {"cap": CAP_NS}
SENDER = "dos-edge@dortmund.example"
SITE = "Dortmund Innenstadt"
T0 = 1796437800.0  # 2026-12-05T02:30:00Z
CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d")
FORBIDDEN_IN_IDS = re.compile(r"[\s,<&]")

STORM = CapWarning(
    id="storm-1",
    severity="severe",
    lines=("Sturmwarnung", "Böen bis 100 km/h", "Aufenthalt im Freien meiden"),
    start=T0,
    end=T0 + 7200,
    source="operator:jana",
    area=(51.51, 7.45, 1500.0),
    event="Storm",
)
FLOOD = CapWarning(
    id="rule-flood-gauge-3",
    severity="warning",
    lines=("Hochwasser an der Emscher",),
    start=T0 + 3600,
    end=T0 + 6 * 3600,
    source="rule:flood-gauge-3",
    event="Flood",
    category="Geo",
)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(XSD))


def _valid(schema: xmlschema.XMLSchema, xml: bytes) -> ET.Element:
    """The message's root after validating it against the OASIS schema (raises if invalid)."""
    schema.validate(xml.decode("utf-8"))
    return ET.fromstring(xml)


def _text(root: ET.Element, path: str) -> str:
    element = root.find(path, NS)
    assert element is not None, f"{path} missing"
    return element.text or ""


def _all(root: ET.Element, path: str) -> list[str]:
    return [element.text or "" for element in root.findall(path, NS)]


def _ref_of(root: ET.Element) -> str:
    """The sender,identifier,sent triple naming this message, read from the message itself."""
    return ",".join(_text(root, f"cap:{tag}") for tag in ("sender", "identifier", "sent"))


def test_vendored_schema_is_the_oasis_file() -> None:
    data = XSD.read_bytes()
    assert hashlib.sha256(data).hexdigest() == XSD_SHA256
    assert b'targetNamespace = "urn:oasis:names:tc:emergency:cap:1.2"' in data


def test_operator_alert_with_area(schema: xmlschema.XMLSchema) -> None:
    root = _valid(schema, cap_xml(STORM, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    assert root.tag == f"{{{CAP_NS}}}alert"
    assert _text(root, "cap:identifier") == cap_identifier(SENDER, "storm-1", 1)
    assert _text(root, "cap:sender") == SENDER
    assert _text(root, "cap:sent") == "2026-12-05T02:30:00-00:00"
    assert (_text(root, "cap:status"), _text(root, "cap:msgType"), _text(root, "cap:scope")) == (
        "Actual",
        "Alert",
        "Public",
    )
    assert root.find("cap:references", NS) is None
    info = "cap:info/cap:"
    assert _text(root, info + "language") == "de-DE"
    assert _text(root, info + "category") == "Met"
    assert _text(root, info + "event") == "Storm"
    assert _text(root, info + "responseType") == "Prepare"
    assert _text(root, info + "urgency") == "Immediate"
    assert _text(root, info + "severity") == "Severe"
    assert _text(root, info + "certainty") == "Observed"
    assert _text(root, info + "onset") == _text(root, info + "effective") == cap_datetime(STORM.start)
    assert _text(root, info + "expires") == cap_datetime(STORM.end) == "2026-12-05T04:30:00-00:00"
    assert _text(root, info + "senderName") == SITE
    assert _text(root, info + "headline") == "Sturmwarnung"
    assert _text(root, info + "description") == "Sturmwarnung\nBöen bis 100 km/h\nAufenthalt im Freien meiden"
    params = dict(
        zip(
            _all(root, info + "parameter/cap:valueName"),
            _all(root, info + "parameter/cap:value"),
            strict=True,
        )
    )
    assert params == {"dosEdgeSource": "operator:jana", "dosEdgeWarningId": "storm-1"}
    assert _text(root, info + "area/cap:areaDesc") == SITE
    # CAP's circle is "lat,lon radius" in WGS84 with the radius in km: 1500 m -> 1.5.
    assert _all(root, info + "area/cap:circle") == ["51.51,7.45 1.5"]


def test_rule_warning_without_area_is_likely_and_expected(schema: xmlschema.XMLSchema) -> None:
    root = _valid(schema, cap_xml(FLOOD, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    assert _text(root, "cap:info/cap:certainty") == "Likely"
    assert _text(root, "cap:info/cap:urgency") == "Expected"  # starts an hour after it is sent
    assert _text(root, "cap:info/cap:severity") == "Moderate"
    assert _text(root, "cap:info/cap:responseType") == "Monitor"
    assert _text(root, "cap:info/cap:category") == "Geo"
    assert root.find("cap:info/cap:area/cap:circle", NS) is None
    assert _text(root, "cap:info/cap:area/cap:areaDesc") == SITE
    assert _text(root, "cap:info/cap:expires") == cap_datetime(FLOOD.end)


@pytest.mark.parametrize(
    ("ours", "cap", "response"),
    [
        ("info", "Minor", "Monitor"),
        ("warning", "Moderate", "Monitor"),
        ("severe", "Severe", "Prepare"),
        ("extreme", "Extreme", "Prepare"),
    ],
)
def test_severity_mapping(schema: xmlschema.XMLSchema, ours: str, cap: str, response: str) -> None:
    w = replace(STORM, severity=ours)
    root = _valid(schema, cap_xml(w, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    assert _text(root, "cap:info/cap:severity") == cap
    assert _text(root, "cap:info/cap:responseType") == response


def test_alert_update_cancel_chain(schema: xmlschema.XMLSchema) -> None:
    """Each message has its own identifier and references the one it replaces."""
    alert = _valid(schema, cap_xml(STORM, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    v2 = replace(STORM, version=2, severity="extreme", lines=("Orkanwarnung", "Böen bis 140 km/h"))
    ref1 = cap_reference(SENDER, cap_message_identifier(STORM, sender=SENDER, msg_type="Alert"), T0)
    assert ref1 == _ref_of(alert)
    update = _valid(
        schema, cap_xml(v2, sender=SENDER, site_name=SITE, msg_type="Update", sent=T0 + 600, references=ref1)
    )
    assert _text(update, "cap:msgType") == "Update"
    assert _text(update, "cap:references") == _ref_of(alert)
    assert _text(update, "cap:identifier") == cap_identifier(SENDER, "storm-1", 2)
    assert _text(update, "cap:info/cap:severity") == "Extreme"
    assert _text(update, "cap:info/cap:headline") == "Orkanwarnung"

    # Withdrawn without a version bump: the Cancel still gets an identifier of its own.
    gone = replace(v2, status="withdrawn")
    ref2 = cap_reference(SENDER, cap_message_identifier(v2, sender=SENDER, msg_type="Update"), T0 + 600)
    cancel = _valid(
        schema,
        cap_xml(gone, sender=SENDER, site_name=SITE, msg_type="Cancel", sent=T0 + 900, references=ref2),
    )
    assert _text(cancel, "cap:msgType") == "Cancel"
    assert _text(cancel, "cap:status") == "Actual"
    assert _text(cancel, "cap:references") == _ref_of(update)
    assert _text(cancel, "cap:info/cap:responseType") == "AllClear"
    assert "withdrawn" in _text(cancel, "cap:note")
    ids = [_text(root, "cap:identifier") for root in (alert, update, cancel)]
    assert len(set(ids)) == 3
    assert all(not FORBIDDEN_IN_IDS.search(i) for i in ids)


def test_expired_cancel_may_reference_several_messages(schema: xmlschema.XMLSchema) -> None:
    refs = " ".join(cap_reference(SENDER, cap_identifier(SENDER, "storm-1", v), T0 + 60 * v) for v in (1, 2))
    gone = replace(STORM, status="expired", version=2)
    root = _valid(
        schema,
        cap_xml(gone, sender=SENDER, site_name=SITE, msg_type="Cancel", sent=STORM.end, references=refs),
    )
    assert _text(root, "cap:references").split() == refs.split()


def test_proposed_warning_is_a_draft_alert(schema: xmlschema.XMLSchema) -> None:
    proposed = replace(FLOOD, status="proposed")
    root = _valid(schema, cap_xml(proposed, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    assert _text(root, "cap:status") == "Draft"
    assert _text(root, "cap:msgType") == "Alert"
    # Issuing the same version later must not repeat the Draft's identifier.
    issued = _valid(schema, cap_xml(FLOOD, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0 + 60))
    assert _text(root, "cap:identifier") != _text(issued, "cap:identifier")
    with pytest.raises(ValueError, match="Draft Alert"):
        cap_xml(proposed, sender=SENDER, site_name=SITE, msg_type="Update", sent=T0, references="a,b,c")


def test_german_text_round_trips(schema: xmlschema.XMLSchema) -> None:
    w = replace(
        STORM,
        lines=("Glätte auf Straßen und Brücken", "Größte Vorsicht, Fußgänger: Überwege meiden"),
        event="Straßenglätte",
        area=None,
    )
    xml = cap_xml(w, sender="Stadt Düsseldorf", site_name="Köln-Süd", msg_type="Alert", sent=T0)
    root = _valid(schema, xml)
    assert _text(root, "cap:info/cap:headline") == "Glätte auf Straßen und Brücken"
    assert _text(root, "cap:info/cap:description") == "\n".join(w.lines)
    assert _text(root, "cap:info/cap:event") == "Straßenglätte"
    assert _text(root, "cap:info/cap:senderName") == "Köln-Süd"
    assert _text(root, "cap:sender") == "Stadt%20Düsseldorf"
    assert "Glätte".encode() in xml  # UTF-8, not character references


def test_hostile_text_is_escaped_and_ids_are_sanitised(schema: xmlschema.XMLSchema) -> None:
    w = CapWarning(
        id='a <b> & "c", d',
        severity="info",
        lines=('<script>alert("x")</script> & more', "it's \x00\x07\x1b bad\ud800 text"),
        start=T0,
        end=T0 + 60,
        source="operator:<O'Neil & Co>",
        event="</event>",
    )
    sender = "edge, <x> & y"
    root = _valid(schema, cap_xml(w, sender=sender, site_name="Site <&>", msg_type="Alert", sent=T0))
    assert _text(root, "cap:info/cap:headline") == '<script>alert("x")</script> & more'
    assert _text(root, "cap:info/cap:description").endswith("it's  bad text")
    assert _text(root, "cap:info/cap:event") == "</event>"
    assert _text(root, "cap:info/cap:area/cap:areaDesc") == "Site <&>"
    assert _text(root, "cap:info/cap:parameter/cap:value") == "operator:<O'Neil & Co>"
    for tag in ("identifier", "sender"):
        assert not FORBIDDEN_IN_IDS.search(_text(root, f"cap:{tag}"))
    assert _text(root, "cap:sender") == "edge%2C%20%3Cx>%20%26%20y"


def test_sanitised_ids_stay_distinct() -> None:
    ids = ["a b", "a_b", "a%20b", "a,b", "a%2Cb", "a.v1", "a"]
    identifiers = {cap_identifier(SENDER, i, 1) for i in ids}
    assert len(identifiers) == len(ids)
    assert cap_identifier(SENDER, "a.v1", 2) != cap_identifier(SENDER, "a", 1)


def test_long_headline_is_shortened(schema: xmlschema.XMLSchema) -> None:
    w = replace(STORM, lines=("Ä" * 300, "zweite Zeile"))
    root = _valid(schema, cap_xml(w, sender=SENDER, site_name=SITE, msg_type="Alert", sent=T0))
    headline = _text(root, "cap:info/cap:headline")
    assert len(headline) == HEADLINE_MAX
    assert headline.endswith("…")
    assert _text(root, "cap:info/cap:description").startswith("Ä" * 300)


def test_times_and_circle_format() -> None:
    assert cap_datetime(0) == "1970-01-01T00:00:00-00:00"
    assert cap_datetime(T0 + 0.999) == "2026-12-05T02:30:00-00:00"  # whole seconds, no fraction
    assert cap_circle(51.5, 7.45, 0) == "51.5,7.45 0"
    assert cap_circle(-33.8688, 151.2093, 250) == "-33.8688,151.2093 0.25"
    assert cap_circle(-0.0000001, 0, 12345.6) == "0,0 12.346"
    for bad in (math.nan, math.inf, -1.0, 1e12):
        with pytest.raises(ValueError, match="outside"):
            cap_datetime(bad)


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        ({"severity": "bad"}, {}, "severity"),
        ({"status": "live"}, {}, "status"),
        ({"category": "Weather"}, {}, "category"),
        ({}, {"msg_type": "Ack"}, "msg_type"),
        ({}, {"msg_type": "Update"}, "reference"),
        ({"status": "withdrawn"}, {"msg_type": "Cancel"}, "reference"),
        ({}, {"references": "not a reference"}, "triples"),
        ({"lines": ()}, {}, "1-4 lines"),
        ({"lines": ("a",) * 5}, {}, "1-4 lines"),
        ({"end": T0}, {}, "end"),
        ({"end": T0 + 0.5}, {}, "end"),
        ({"start": math.nan}, {}, "outside"),
        ({"end": math.inf}, {}, "outside"),
        ({}, {"language": "de_DE"}, "language"),
        ({}, {"site_name": " \x00 "}, "site_name"),
        ({"area": (91.0, 7.0, 10.0)}, {}, "area"),
        ({"area": (51.0, 7.0, -1.0)}, {}, "area"),
        ({"area": (51.0, math.nan, 1.0)}, {}, "area"),
        ({"version": 0}, {}, "version"),
        ({"id": ""}, {}, "empty"),
        ({}, {"sender": ""}, "empty"),
    ],
)
def test_refuses_what_would_mislead(change: dict[str, object], kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"sender": SENDER, "site_name": SITE, "msg_type": "Alert", "sent": T0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cap_xml(replace(STORM, **change), **args)  # type: ignore[arg-type]


def test_reference_refuses_unsanitised_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"):
        cap_reference(SENDER, "a b", T0)
    assert cap_reference("x y", "x%20y.a.v1", T0) == "x%20y,x%20y.a.v1,2026-12-05T02:30:00-00:00"


_TEXT = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from("<>&\"',; \t\r\n\x00\x0b\x7f\x85\u2028äöüßÄÖÜ€")),
    max_size=40,
)
_TIME = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_AREA = st.none() | st.tuples(
    st.floats(-90, 90), st.floats(-180, 180), st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=150, deadline=None)
@given(
    wid=_TEXT.filter(bool),
    lines=st.lists(_TEXT, min_size=1, max_size=4).map(tuple),
    start=_TIME,
    duration=st.floats(min_value=1, max_value=1e8),
    sent=_TIME,
    severity=st.sampled_from(["info", "warning", "severe", "extreme"]),
    status=st.sampled_from(["proposed", "issued", "withdrawn", "expired"]),
    source=st.sampled_from(["operator:", "rule:"]).flatmap(lambda p: _TEXT.map(lambda t: p + t)),
    area=_AREA,
    event=_TEXT,
    sender=_TEXT.filter(bool),
    site=_TEXT.map(lambda t: "Site " + t),  # a blank site name is refused (tested above)
    version=st.integers(1, 10**6),
    msg_type=st.sampled_from(["Alert", "Update", "Cancel"]),
)
def test_any_warning_validates(
    schema: xmlschema.XMLSchema,
    wid: str,
    lines: tuple[str, ...],
    start: float,
    duration: float,
    sent: float,
    severity: str,
    status: str,
    source: str,
    area: tuple[float, float, float] | None,
    event: str,
    sender: str,
    site: str,
    version: int,
    msg_type: str,
) -> None:
    if status == "proposed":
        msg_type = "Alert"
    w = CapWarning(
        id=wid,
        severity=severity,
        lines=lines,
        start=start,
        end=start + duration,
        source=source,
        status=status,
        area=area,
        event=event,
        version=version,
    )
    previous = cap_reference(sender, cap_identifier(sender, wid, max(1, version - 1)), sent)
    references = previous if msg_type != "Alert" else ""
    xml = cap_xml(w, sender=sender, site_name=site, msg_type=msg_type, sent=sent, references=references)
    root = _valid(schema, xml)
    assert _text(root, "cap:identifier") == cap_message_identifier(w, sender=sender, msg_type=msg_type)
    assert not FORBIDDEN_IN_IDS.search(_text(root, "cap:identifier"))
    assert not FORBIDDEN_IN_IDS.search(_text(root, "cap:sender"))
    for tag in ("sent", "info/cap:effective", "info/cap:onset", "info/cap:expires"):
        assert CAP_TIME.fullmatch(_text(root, f"cap:{tag}"))
    assert _text(root, "cap:info/cap:expires") == cap_datetime(w.end)
    assert len(_text(root, "cap:info/cap:headline")) <= HEADLINE_MAX
    if msg_type != "Alert":
        assert _text(root, "cap:references") == previous
