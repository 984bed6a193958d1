"""Common Alerting Protocol (OASIS CAP 1.2) messages for the daemon's warnings.

The city's warning app and its other channels (sirens, radio, partner feeds) take CAP, not our
own payloads, so every change of a warning is published as one CAP message: the first issue is
an ``Alert``, each later change of an issued warning an ``Update`` that references the message
it replaces, and a withdrawn or expired warning a ``Cancel`` that references the last one. A
proposed warning (not yet approved by an operator) goes out as ``<status>Draft</status>``,
which CAP defines as "not actionable".

This module is pure: it turns a `CapWarning` into CAP 1.2 XML bytes (stdlib ElementTree only)
and refuses, with `ValueError`, what would make an invalid or misleading message. Rules that
the schema alone does not enforce and this module does:

* Times are whole seconds in UTC, written as CAP demands: no fractional seconds, an explicit
  offset, and UTC as ``-00:00`` (CAP 1.2 section 3.3.2: "The timezone for UTC MUST be
  represented as -00:00"; the schema's pattern allows either sign).
* ``sender`` and ``identifier`` must not contain whitespace, commas, ``<`` or ``&``. They are
  percent-encoded (those characters, ``%`` itself and control characters, as UTF-8 bytes), so
  the mapping stays one-to-one and two different warning ids never share an identifier.
* Free text (lines, event, site name, source) loses the characters XML 1.0 cannot carry (most
  control characters, lone surrogates); ElementTree escapes ``<``, ``&`` and the rest.
* Each published message has its own identifier: `cap_identifier` for an actual Alert or
  Update, with ``.draft`` or ``.cancel`` appended for a Draft or a Cancel (see
  `cap_message_identifier`), so a Cancel never repeats the identifier of the Update before it
  even when the warning's version did not change.
"""

from __future__ import annotations

import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "CAP_NS",
    "CapWarning",
    "cap_circle",
    "cap_datetime",
    "cap_identifier",
    "cap_message_identifier",
    "cap_reference",
    "cap_xml",
]

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
"""The CAP 1.2 XML namespace."""

SEVERITY = {"info": "Minor", "warning": "Moderate", "severe": "Severe", "extreme": "Extreme"}
"""Our severity scale -> CAP ``<severity>``."""

STATUSES = frozenset({"proposed", "issued", "withdrawn", "expired"})
MSG_TYPES = frozenset({"Alert", "Update", "Cancel"})
CATEGORIES = frozenset(
    {
        "Geo",
        "Met",
        "Safety",
        "Security",
        "Rescue",
        "Fire",
        "Health",
        "Env",
        "Transport",
        "Infra",
        "CBRNE",
        "Other",
    }
)
HEADLINE_MAX = 160
"""CAP: the headline SHOULD be under 160 characters (one SMS / pager screen)."""
EVENT_MAX = 80
_MAX_EPOCH = 253402300800.0  # 10000-01-01T00:00:00Z: CAP's pattern has four year digits
_UTC_OFFSET = "-00:00"

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")
_CAP_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d"
_REFERENCE = re.compile(rf"[^,\s<&]+,[^,\s<&]+,{_CAP_TIME}")


@dataclass(frozen=True, slots=True)
class CapWarning:
    """A warning as CAP needs it: what is shown, when, where, how bad and who said so."""

    id: str
    """The warning's id (``storm-1``, ``rule-flood-gauge-3``); stable across its versions."""
    severity: str
    """Our scale: ``info`` | ``warning`` | ``severe`` | ``extreme``."""
    lines: tuple[str, ...]
    """The display text, 1-4 lines; the first is the headline."""
    start: float
    """Epoch seconds from which the warning is in force."""
    end: float
    """Epoch seconds of its expected end (CAP ``<expires>``)."""
    source: str
    """``operator:<name>`` or ``rule:<rule id>``."""
    status: str = "issued"
    """Our lifecycle: ``proposed`` | ``issued`` | ``withdrawn`` | ``expired``."""
    area: tuple[float, float, float] | None = None
    """A circle ``(lat, lon, radius_m)`` in WGS84, or None for the whole site."""
    event: str = ""
    """The kind of event (``Flood``, ``Storm``); empty: the first line, else ``Warning``."""
    category: str = "Met"
    """The CAP category (Geo Met Safety Security Rescue Fire Health Env Transport Infra CBRNE Other)."""
    version: int = 1
    """Bumps on every update of the same warning."""


def cap_datetime(epoch: float) -> str:
    """Epoch seconds as a CAP dateTime, whole seconds in UTC: ``2026-12-05T02:30:00-00:00``."""
    if not math.isfinite(epoch) or not 0.0 <= epoch < _MAX_EPOCH:
        raise ValueError(f"time {epoch!r} is outside what CAP can write (1970..9999)")
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%S") + _UTC_OFFSET


def _needs_escape(char: str) -> bool:
    """Whether CAP forbids ``char`` in a sender or identifier (or XML cannot carry it)."""
    return char.isspace() or char in ",<&" or unicodedata.category(char) in {"Cc", "Cs"}


def _escape_id(text: str) -> str:
    """Percent-encode what CAP forbids in sender/identifier (and ``%``), one-to-one."""
    out: list[str] = []
    for char in text:
        if char == "%" or _needs_escape(char):
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


def _clean(text: str) -> str:
    """Text with the characters XML 1.0 cannot carry removed."""
    return _XML_INVALID.sub("", text)


def cap_identifier(sender: str, warning_id: str, version: int) -> str:
    """The identifier of an actual Alert/Update for one version of a warning.

    ``<sender>.<warning id>.v<version>``, both names percent-encoded (see the module docstring):
    unique per sender, warning and version.
    """
    if not sender or not warning_id:
        raise ValueError("sender and warning id must not be empty")
    if version < 1:
        raise ValueError(f"version must be >= 1, not {version}")
    return f"{_escape_id(sender)}.{_escape_id(warning_id)}.v{version}"


def cap_message_identifier(w: CapWarning, *, sender: str, msg_type: str) -> str:
    """The identifier `cap_xml` gives the message of type ``msg_type`` about ``w``."""
    base = cap_identifier(sender, w.id, w.version)
    if msg_type == "Cancel":
        return base + ".cancel"
    if w.status == "proposed":
        return base + ".draft"
    return base


def cap_reference(sender: str, identifier: str, sent: float) -> str:
    """The ``sender,identifier,sent`` triple that a later message's ``references`` names."""
    if not identifier or any(_needs_escape(char) for char in identifier):
        raise ValueError(f"identifier {identifier!r} is not a CAP identifier (see cap_identifier)")
    if not sender:
        raise ValueError("sender must not be empty")
    return f"{_escape_id(sender)},{identifier},{cap_datetime(sent)}"


def _check(w: CapWarning, msg_type: str, references: str, language: str, site_name: str) -> None:
    """Refuse what would make an invalid or misleading message."""
    if w.severity not in SEVERITY:
        raise ValueError(f"severity {w.severity!r} is not one of {sorted(SEVERITY)}")
    if w.status not in STATUSES:
        raise ValueError(f"status {w.status!r} is not one of {sorted(STATUSES)}")
    if w.category not in CATEGORIES:
        raise ValueError(f"category {w.category!r} is not a CAP category")
    if msg_type not in MSG_TYPES:
        raise ValueError(f"msg_type {msg_type!r} is not one of {sorted(MSG_TYPES)}")
    if w.status == "proposed" and msg_type != "Alert":
        raise ValueError("a proposed warning is published as a Draft Alert only")
    if not 1 <= len(w.lines) <= 4:
        raise ValueError(f"a warning has 1-4 lines, not {len(w.lines)}")
    for when in (w.start, w.end):
        cap_datetime(when)  # refuses NaN, infinities and what CAP cannot write
    if not math.floor(w.end) > math.floor(w.start):
        raise ValueError("a warning must end at least a second after it starts")
    if msg_type in {"Update", "Cancel"} and not references.strip():
        raise ValueError(f"an {msg_type} must reference the message it replaces")
    bad = [ref for ref in references.split() if not _REFERENCE.fullmatch(ref)]
    if bad:
        raise ValueError(f"references {bad!r} are not sender,identifier,sent triples")
    if not _LANGUAGE.fullmatch(language):
        raise ValueError(f"language {language!r} is not an RFC 3066 tag")
    if not _clean(site_name).strip():
        raise ValueError("site_name must not be empty (it is the area's description)")
    if w.area is not None:
        lat, lon, radius_m = w.area
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and 0.0 <= radius_m < math.inf):
            raise ValueError(f"area {w.area!r} is not a WGS84 circle (lat, lon, radius_m >= 0)")


def _decimal(value: float, places: int) -> str:
    """A plain decimal with at most ``places`` places, no trailing zeros, no ``-0``."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def cap_circle(lat: float, lon: float, radius_m: float) -> str:
    """A CAP ``<circle>``: ``lat,lon radius_km`` in WGS84 (``51.51,7.45 1.5``)."""
    return f"{_decimal(lat, 6)},{_decimal(lon, 6)} {_decimal(radius_m / 1000.0, 3)}"


def _event(w: CapWarning) -> str:
    """The event type: the given one, else the first non-blank line, else ``Warning``."""
    for text in (w.event, *w.lines):
        cleaned = " ".join(_clean(text).split())
        if cleaned:
            return cleaned[:EVENT_MAX]
    return "Warning"


def _headline(w: CapWarning, event: str) -> str:
    """The first non-blank line, shortened to `HEADLINE_MAX` characters; else the event."""
    first = next((" ".join(_clean(line).split()) for line in w.lines if _clean(line).strip()), event)
    return first if len(first) <= HEADLINE_MAX else first[: HEADLINE_MAX - 1] + "\u2026"


def _sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    element.text = text
    return element


def _info(
    w: CapWarning, parent: ET.Element, *, msg_type: str, sent: float, site_name: str, language: str
) -> None:
    """The ``<info>`` block, in the schema's element order."""
    event = _event(w)
    info = ET.SubElement(parent, f"{{{CAP_NS}}}info")
    _sub(info, "language", language)
    _sub(info, "category", w.category)
    _sub(info, "event", event)
    if msg_type == "Cancel":
        response = "AllClear"
    else:
        response = "Prepare" if w.severity in {"severe", "extreme"} else "Monitor"
    _sub(info, "responseType", response)
    # Compared in whole seconds, as written: a start in the same second as `sent` is "now".
    _sub(info, "urgency", "Immediate" if math.floor(w.start) <= math.floor(sent) else "Expected")
    _sub(info, "severity", SEVERITY[w.severity])
    _sub(info, "certainty", "Observed" if w.source.startswith("operator:") else "Likely")
    _sub(info, "effective", cap_datetime(w.start))
    _sub(info, "onset", cap_datetime(w.start))
    _sub(info, "expires", cap_datetime(w.end))
    _sub(info, "senderName", _clean(site_name))
    _sub(info, "headline", _headline(w, event))
    _sub(info, "description", "\n".join(_clean(line) for line in w.lines))
    for name, value in (("dosEdgeSource", w.source), ("dosEdgeWarningId", w.id)):
        parameter = ET.SubElement(info, f"{{{CAP_NS}}}parameter")
        _sub(parameter, "valueName", name)
        _sub(parameter, "value", _clean(value))
    area = ET.SubElement(info, f"{{{CAP_NS}}}area")
    _sub(area, "areaDesc", _clean(site_name))
    if w.area is not None:
        _sub(area, "circle", cap_circle(*w.area))


def cap_xml(
    w: CapWarning,
    *,
    sender: str,
    site_name: str,
    msg_type: str,
    sent: float,
    references: str = "",
    language: str = "de-DE",
) -> bytes:
    """One CAP 1.2 message (UTF-8 XML with declaration) about one change of a warning.

    ``msg_type``: ``Alert`` for the first issue (and every message about a proposed warning,
    which is a Draft), ``Update`` for a changed issued warning, ``Cancel`` for a withdrawn or
    expired one. Update and Cancel need ``references``: the replaced message's
    `cap_reference` (several separated by whitespace). ``sent`` is the message's own time.
    """
    _check(w, msg_type, references, language, site_name)
    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", cap_message_identifier(w, sender=sender, msg_type=msg_type))
    _sub(alert, "sender", _escape_id(sender))
    _sub(alert, "sent", cap_datetime(sent))
    _sub(alert, "status", "Draft" if w.status == "proposed" else "Actual")
    _sub(alert, "msgType", msg_type)
    _sub(alert, "scope", "Public")
    if msg_type == "Cancel":
        _sub(alert, "note", f"dosEdge warning {w.status}")
    if references.strip():
        _sub(alert, "references", " ".join(references.split()))
    _info(w, alert, msg_type=msg_type, sent=sent, site_name=site_name, language=language)
    ET.indent(alert, space="  ")
    data: bytes = ET.tostring(alert, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS)
    return data
