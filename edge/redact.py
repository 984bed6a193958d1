"""One redaction for every URL and secret that could reach a log line or an error text.

Three layers, all used by the log pipeline (`edge.logs`) and by every message the CLI prints:
- `redact_url`: a URL's userinfo password and password-like query values become `***`
  (`mqtt://edge:***@broker:8883`, `postgresql+psycopg://edge:***@db/edge`).
- `redact_text`: the same for every URL inside free text (exception messages, tracebacks),
  plus `password=...` pairs, plus every literal secret the process has been told about.
- `remember`: settings register the secrets they hold (URL passwords, TLS key passwords), so a
  secret that shows up outside any URL (a library's message, a repr) is still masked.

`redact_event` is the structlog processor: keys named like secrets lose their value, every
string anywhere in the event (nested dicts and lists included) goes through `redact_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
# Shorter "secrets" would mask ordinary words and numbers all over the logs.
_MIN_SECRET_LEN = 4
_SECRET_KEYS = frozenset(
    {"password", "passwd", "pwd", "pass", "secret", "token", "api_key", "apikey", "authorization",
     "credentials", "key_password", "private_key", "sslpassword", "client_secret"}
)  # fmt: skip
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token")
# scheme://user:password@  (the password may not contain '@' or '/' unencoded, per RFC 3986)
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)(?P<pw>[^\s@/'\"]+)(?=@)")
# password=xyz, password: 'xyz', "password": "xyz", key_password=... in conninfo strings and reprs
_PAIR = re.compile(
    r"(?P<key>\b[A-Za-z0-9_]*?(?:password|passwd|pwd|secret|token)['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<value>[^\s'\",&;)}\]]+)",
    re.IGNORECASE,
)

# name=value in a query string
_QUERY_PAIR = re.compile(r"(?P<key>[?&](?P<name>[^=&#]+)=)(?P<value>[^&#]*)")

_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def remember(*secrets: str | None) -> None:
    """Register literal secrets to mask wherever they appear (and their URL-encoded forms)."""
    global _known_pattern  # noqa: PLW0603 - one process-wide list, read by every log line
    added = False
    for s in secrets:
        if not s or len(s) < _MIN_SECRET_LEN:
            continue
        for form in {s, quote(s, safe=""), unquote(s)}:
            if len(form) >= _MIN_SECRET_LEN and form not in _known:
                _known.add(form)
                added = True
    if added:
        # Longest first, so a secret that contains another is masked whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(a) for a in alternatives))


def remember_url(url: str | None) -> None:
    """Register the password of a URL (userinfo and password-like query values)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        remember(parts.password)
        remember(*(v for k, v in parse_qsl(parts.query) if is_secret_key(k)))
    except ValueError:
        # An unparsable URL (bad port ...): take what the pattern sees.
        for m in _URL_USERINFO.finditer(url):
            remember(m.group("pw"))


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (`password`, `mqtt_password`, `token` ...)."""
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def redact_url(url: str) -> str:
    """The URL with its password (userinfo and password-like query values) replaced by `***`.

    Textual, so the rest of the URL stays exactly as written.
    """
    out = _URL_USERINFO.sub(lambda m: m.group("head") + MASK, url)
    out = _QUERY_PAIR.sub(
        lambda m: m.group("key") + (MASK if is_secret_key(m.group("name")) else m.group("value")), out
    )
    return redact_text(out)


def redact_text(text: str) -> str:
    """Free text with every URL password, `password=...` pair and known secret masked."""
    if not text:
        return text
    out = _URL_USERINFO.sub(lambda m: m.group("head") + MASK, text)
    out = _PAIR.sub(lambda m: m.group("key") + MASK, out)
    if _known_pattern is not None:
        out = _known_pattern.sub(MASK, out)
    return out


def redact_value(value: Any) -> Any:
    """A value with every string in it redacted (dicts, lists, tuples and sets walked)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) and v else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items: Iterable[Any] = (redact_value(v) for v in value)
        return type(value)(items) if not isinstance(value, tuple) else tuple(items)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is rendered by its repr (structlog's fallback): a settings object or a
    # client would show its URL. Redact the repr now.
    return redact_text(repr(value))


def redact_event(_logger: object, _method: str, event_dict: Any) -> Any:
    """structlog processor: mask secrets everywhere in the event (run it last, after exc_info)."""
    return {k: MASK if is_secret_key(k) and v else redact_value(v) for k, v in event_dict.items()}
